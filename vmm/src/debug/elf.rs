//! Reading the vmlinux ELF: identity key, symbol table, and raw DWARF
//! sections. Goes through `object::ReadCache`, which reads only the byte
//! ranges asked for, so checking a cached index costs a few KiB of I/O rather
//! than the whole (~60 MiB) file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use object::elf::{self, Sym64};
use object::read::elf::Sym;
use object::read::ReadCache;
use object::{CompressionFormat, LittleEndian, Object, ObjectSection, SectionKind};
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
    /// The ELF machine, if memrace runs guests of it.
    pub arch: Option<crate::arch::Arch>,
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

    fn not_elf(&self, reason: impl ToString) -> SymbolError {
        SymbolError::NotElf {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// A whole section, read with one positional read (not through the
    /// ReadCache, which would keep a second copy alive).
    fn read_section<'d>(
        &self,
        section: &object::Section<'d, 'd, &'d ReadCache<File>>,
    ) -> Result<Vec<u8>, SymbolError> {
        let range = section
            .compressed_file_range()
            .map_err(|e| self.not_elf(e))?;
        if range.format != CompressionFormat::None {
            return Err(SymbolError::CompressedDebugInfo {
                path: self.path.clone(),
                section: section.name().unwrap_or("?").to_string(),
            });
        }
        let mut data = vec![0; range.uncompressed_size as usize];
        self.file
            .read_exact_at(&mut data, range.offset)
            .map_err(|e| self.io(e))?;
        Ok(data)
    }

    /// The ELF symbol table, parsed by hand from two bulk reads: going
    /// through `object`'s symbol API would cost a read syscall per name
    /// (~23k of them) with a ReadCache.
    fn symbols<'d>(
        &self,
        obj: &object::File<'d, &'d ReadCache<File>>,
        text_sections: &HashSet<usize>,
    ) -> Result<Vec<ElfSymbol>, SymbolError> {
        if !obj.is_64() || !obj.is_little_endian() {
            return Err(self.not_elf("not a 64-bit little-endian (x86-64) kernel"));
        }
        let section = |name| {
            let s = obj
                .section_by_name(name)
                .ok_or_else(|| self.not_elf(format!("no {name} section; was it stripped?")))?;
            self.read_section(&s)
        };
        let (symtab, strtab) = (section(".symtab")?, section(".strtab")?);
        let raw: &[Sym64<LittleEndian>] = object::pod::slice_from_all_bytes(&symtab)
            .map_err(|()| self.not_elf("truncated .symtab"))?;
        let e = LittleEndian;
        let symbols = raw
            .iter()
            .filter_map(|sym| {
                let name = strtab.get(sym.st_name(e) as usize..)?;
                let name = &name[..name.iter().position(|&b| b == 0)?];
                if name.is_empty() {
                    return None;
                }
                let in_text = match sym.st_shndx(e) {
                    elf::SHN_UNDEF => return None,
                    elf::SHN_ABS => false,
                    idx => text_sections.contains(&usize::from(idx)),
                };
                let code = match sym.st_type() {
                    elf::STT_FUNC | elf::STT_GNU_IFUNC => true,
                    elf::STT_NOTYPE => in_text,
                    elf::STT_OBJECT | elf::STT_TLS | elf::STT_COMMON => false,
                    _ => return None, // sections, file names
                };
                Some(ElfSymbol {
                    name: String::from_utf8_lossy(name).into_owned(),
                    addr: sym.st_value(e),
                    code,
                    global: sym.st_bind() != elf::STB_LOCAL,
                })
            })
            .collect();
        Ok(symbols)
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
                self.file
                    .read_exact_at(&mut head, 0)
                    .map_err(|e| self.io(e))?;
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
        .map(|s| (s.index().0, s.address()..s.address() + s.size()))
        .collect();
    let text_index: HashSet<usize> = text_sections.iter().map(|(i, _)| *i).collect();
    let symbols = opened.symbols(&obj, &text_index)?;
    let code_ranges = text_sections
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.start != 0)
        .collect();
    Ok(ElfInfo {
        key,
        arch: crate::arch::Arch::from_elf(obj.architecture()),
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
        match obj.section_by_name(name) {
            Some(section) => {
                sections.insert(name, opened.read_section(&section)?);
            }
            None if REQUIRED.contains(&name) => {
                return Err(SymbolError::NoDebugInfo {
                    path: path.to_path_buf(),
                    section: name.to_string(),
                })
            }
            None => {}
        }
    }
    Ok(DwarfSections { sections })
}
