//! [`Symbols`]: names, source lines and struct members of one vmlinux.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::dwarf::DebugInfo;
use super::elf::{self, DwarfSections, ElfSymbol, Key};
use super::index::{self, Index, IndexSource};
use super::returns::ReturnType;
use super::spec::Spec;
use super::{suggest, SymbolError};
use crate::arch::Arch;

/// How many alternatives an error message offers.
const SUGGESTIONS: usize = 5;

/// Symbol table, inlining facts and (lazily) DWARF of one vmlinux.
pub struct Symbols {
    path: PathBuf,
    /// The kernel's architecture (its ELF machine).
    arch: Arch,
    key: Key,
    source: IndexSource,
    has_dwarf: bool,
    symbols: Vec<ElfSymbol>,
    by_name: HashMap<String, Vec<usize>>,
    /// Indices of code symbols sorted by address; at equal addresses the
    /// preferred name (global first) comes first.
    code_by_addr: Vec<usize>,
    code_ranges: Vec<Range<u64>>,
    inlined: HashMap<String, Vec<String>>,
    fields: HashMap<(String, String), u64>,
    /// Read on first use by `location`/`field_offset` (or kept from building
    /// the index): ~45 MiB that most runs never need.
    dwarf: OnceLock<DwarfSections>,
}

impl Symbols {
    /// Loads `vmlinux` (ELF + DWARF), using the cached index
    /// `<vmlinux>.memrace-index` when it matches the file and (re)creating it
    /// otherwise. A failure to write the index is not an error; see
    /// [`Symbols::index_source`].
    pub fn load(vmlinux: &Path) -> Result<Symbols, SymbolError> {
        Self::load_with_index(vmlinux, &index::default_path(vmlinux))
    }

    /// [`Symbols::load`] with the index kept at `index` instead (e.g. when the
    /// kernel's directory is read-only).
    pub fn load_with_index(vmlinux: &Path, index: &Path) -> Result<Symbols, SymbolError> {
        let mut syms = Self::from_elf(vmlinux)?;
        if let Some(cached) = Index::read(index, &syms.key) {
            syms.apply(cached, IndexSource::Cached(index.to_path_buf()));
            return Ok(syms);
        }
        let built = syms.build_index()?;
        let source = match built.write(index) {
            Ok(()) => IndexSource::Saved(index.to_path_buf()),
            Err(e) => IndexSource::Unsaved(format!("cannot write {}: {e}", index.display())),
        };
        syms.apply(built, source);
        Ok(syms)
    }

    /// Loads without reading or writing any index (the cold path; for
    /// benchmarks and one-off tools).
    pub fn load_uncached(vmlinux: &Path) -> Result<Symbols, SymbolError> {
        let mut syms = Self::from_elf(vmlinux)?;
        let built = syms.build_index()?;
        syms.apply(
            built,
            IndexSource::Unsaved("load_uncached does not use an index".into()),
        );
        Ok(syms)
    }

    /// Where the inlining facts came from (cache hit, rebuilt, not saved).
    pub fn index_source(&self) -> &IndexSource {
        &self.source
    }

    /// The kernel's architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Address of an out-of-line function (or assembly entry point). A name spelled
    /// for another architecture's kernel (`__x64_sys_getpid` in an arm64 kernel) finds
    /// this one's (`__arm64_sys_getpid`): see [`crate::arch::kernel_symbol_alias`].
    pub fn function(&self, name: &str) -> Result<u64, SymbolError> {
        if let Some(addr) = self.lookup(name, true)? {
            return Ok(addr);
        }
        if let Some(alias) = crate::arch::kernel_symbol_alias(self.arch, name) {
            if let Some(addr) = self.lookup(&alias, true)? {
                return Ok(addr);
            }
        }
        if let Some(addr) = self.lookup(name, false)? {
            return Err(SymbolError::NotCode {
                name: name.into(),
                addr,
            });
        }
        if let Some(callers) = self.inlined.get(name) {
            let mut suggestions: Vec<String> = callers.iter().take(SUGGESTIONS).cloned().collect();
            for s in self.similar_code(name) {
                if suggestions.len() < SUGGESTIONS && !suggestions.contains(&s) {
                    suggestions.push(s);
                }
            }
            return Err(SymbolError::InlinedOnly {
                name: name.into(),
                suggestions,
            });
        }
        Err(SymbolError::NotFound {
            name: name.into(),
            suggestions: self.similar_code(name),
        })
    }

    /// Out-of-line functions that contain an inlined copy of `name` (at most
    /// 16, sorted). A breakpoint on `name` itself misses those copies, so
    /// callers can warn when this is not empty.
    pub fn inlined_callers(&self, name: &str) -> &[String] {
        self.inlined.get(name).map_or(&[], Vec::as_slice)
    }

    /// Address of any symbol, data included (`pcpu_hot`, `__per_cpu_offset`).
    /// Per-CPU symbols give their offset in the per-CPU area.
    pub fn symbol(&self, name: &str) -> Result<u64, SymbolError> {
        self.lookup(name, false)?
            .ok_or_else(|| SymbolError::NotFound {
                name: name.into(),
                suggestions: suggest::similar(
                    name,
                    self.by_name.keys().map(String::as_str),
                    SUGGESTIONS,
                ),
            })
    }

    /// `file:line` (file matched by path suffix, e.g. `mm/rmap.c:1870`) to the
    /// lowest address of an `is_stmt` line-table row for that line.
    pub fn location(&self, spec: &str) -> Result<u64, SymbolError> {
        match Spec::parse(spec)? {
            Spec::Line { file, line } => self.line(&file, line),
            _ => Err(SymbolError::BadSpec {
                spec: spec.into(),
                reason: "a location needs the form `file.c:123`".into(),
            }),
        }
    }

    /// Resolves a breakpoint spec: `func`, `func+0x12`, `file.c:123` or
    /// `0xffffffff81234567`.
    pub fn resolve(&self, spec: &str) -> Result<u64, SymbolError> {
        match Spec::parse(spec)? {
            Spec::Address(addr) => Ok(addr),
            Spec::Function { name, offset } => Ok(self.function(&name)? + offset),
            Spec::Line { file, line } => self.line(&file, line),
        }
    }

    /// Byte offset of member `field` in struct/union `ty` (anonymous nested
    /// structs/unions are searched), e.g. `("task_struct", "pid")`.
    pub fn field_offset(&self, ty: &str, field: &str) -> Result<u64, SymbolError> {
        if let Some(&off) = self.fields.get(&(ty.to_string(), field.to_string())) {
            return Ok(off);
        }
        DebugInfo::new(&self.path, self.dwarf()?).field_offset(ty, field)
    }

    /// The declared return type of the out-of-line function `name`, from the DWARF.
    pub fn return_type(&self, name: &str) -> Result<ReturnType, SymbolError> {
        let addr = self.function(name)?;
        DebugInfo::new(&self.path, self.dwarf()?)
            .return_type(addr)?
            .ok_or_else(|| SymbolError::NoSubprogram {
                name: name.into(),
                addr,
            })
    }

    /// Whether `addr` lies in the kernel's code (its executable sections).
    pub fn is_code(&self, addr: u64) -> bool {
        self.code_ranges.iter().any(|r| r.contains(&addr))
    }

    /// `symbol+0xoff` of the nearest code symbol at or below `addr`, for
    /// reports; the raw address if `addr` is not in kernel code (a data
    /// address described as `last_function+0x1234567` would mislead).
    pub fn describe(&self, addr: u64) -> String {
        match self.nearest_code(addr).filter(|_| self.is_code(addr)) {
            Some(sym) => format!("{}+{:#x}", sym.name, addr - sym.addr),
            None => format!("{addr:#x}"),
        }
    }

    /// The out-of-line function whose code holds `addr`, if `addr` is kernel code.
    pub fn function_containing(&self, addr: u64) -> Option<&str> {
        self.nearest_code(addr)
            .filter(|_| self.is_code(addr))
            .map(|sym| sym.name.as_str())
    }

    /// The out-of-line functions with code from `lines` of `file` (a path suffix such
    /// as `mm/rmap.c`), where that code was inlined included, each with the lines it
    /// holds: what a change to those lines changes in this kernel. Lines without code
    /// give none.
    pub fn functions_at_lines(
        &self,
        file: &str,
        lines: &BTreeSet<u64>,
    ) -> Result<BTreeMap<String, BTreeSet<u64>>, SymbolError> {
        let rows = DebugInfo::new(&self.path, self.dwarf()?).line_addresses(
            file,
            lines,
            &self.code_ranges,
        )?;
        let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (line, addr) in rows {
            if let Some(f) = self.function_containing(addr) {
                out.entry(f.to_string()).or_default().insert(line);
            }
        }
        Ok(out)
    }

    fn from_elf(vmlinux: &Path) -> Result<Symbols, SymbolError> {
        let info = elf::read_info(vmlinux)?;
        let arch = info.arch.ok_or_else(|| SymbolError::NotElf {
            path: vmlinux.to_path_buf(),
            reason: "its ELF machine is neither x86_64 nor arm64 (AArch64), the architectures memrace runs".into(),
        })?;
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::with_capacity(info.symbols.len());
        for (i, s) in info.symbols.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        let mut code_by_addr: Vec<usize> = (0..info.symbols.len())
            .filter(|&i| info.symbols[i].code)
            .collect();
        // Preferred name first among aliases: global, then alphabetical.
        let rank = |i: &usize| {
            let s = &info.symbols[*i];
            (s.addr, !s.global, s.name.as_str())
        };
        code_by_addr.sort_unstable_by(|a, b| rank(a).cmp(&rank(b)));
        Ok(Symbols {
            path: vmlinux.to_path_buf(),
            arch,
            key: info.key,
            // Placeholders until `apply` installs the index.
            source: IndexSource::Unsaved(String::new()),
            has_dwarf: true,
            symbols: info.symbols,
            by_name,
            code_by_addr,
            code_ranges: info.code_ranges,
            inlined: HashMap::new(),
            fields: HashMap::new(),
            dwarf: OnceLock::new(),
        })
    }

    /// The slow part: a full DWARF walk. Keeps the DWARF it read.
    fn build_index(&mut self) -> Result<Index, SymbolError> {
        let sections = match elf::read_dwarf(&self.path, &self.key) {
            Ok(s) => s,
            // Function breakpoints still work from the ELF symbol table.
            Err(SymbolError::NoDebugInfo { .. }) => {
                return Ok(Index::new(self.key.clone(), false, vec![], vec![]))
            }
            Err(e) => return Err(e),
        };
        let info = DebugInfo::new(&self.path, &sections);
        let mut inlined: Vec<(String, Vec<String>)> = info
            .inlined_callers()?
            .into_iter()
            .map(|(name, pcs)| {
                let callers: BTreeSet<String> = pcs
                    .into_iter()
                    .filter_map(|pc| self.nearest_code(pc).map(|s| s.name.clone()))
                    .collect();
                (name, callers.into_iter().take(Index::MAX_CALLERS).collect())
            })
            .collect();
        inlined.sort();
        // A member missing here (e.g. no `pcpu_hot` before 6.2) is not fatal:
        // asking for it later reports the error.
        let fields = Index::COMMON_FIELDS
            .iter()
            .filter_map(|&(ty, field)| {
                let off = info.field_offset(ty, field).ok()?;
                Some((ty.to_string(), field.to_string(), off))
            })
            .collect();
        drop(info);
        let _ = self.dwarf.set(sections);
        Ok(Index::new(self.key.clone(), true, inlined, fields))
    }

    fn apply(&mut self, index: Index, source: IndexSource) {
        self.has_dwarf = index.has_dwarf;
        self.inlined = index.inlined.into_iter().collect();
        self.fields = index
            .fields
            .into_iter()
            .map(|(t, f, off)| ((t, f), off))
            .collect();
        self.source = source;
    }

    fn dwarf(&self) -> Result<&DwarfSections, SymbolError> {
        if !self.has_dwarf {
            return Err(SymbolError::NoDebugInfo {
                path: self.path.clone(),
                section: ".debug_info".into(),
            });
        }
        if let Some(s) = self.dwarf.get() {
            return Ok(s);
        }
        let sections = elf::read_dwarf(&self.path, &self.key)?;
        Ok(self.dwarf.get_or_init(|| sections))
    }

    fn line(&self, file: &str, line: u64) -> Result<u64, SymbolError> {
        DebugInfo::new(&self.path, self.dwarf()?).line_address(file, line, &self.code_ranges)
    }

    /// The unique address `name` stands for, if any. Several symbols of one
    /// name at one address are aliases; at different addresses, a single
    /// global one wins over file-local ones, otherwise it is ambiguous.
    fn lookup(&self, name: &str, code_only: bool) -> Result<Option<u64>, SymbolError> {
        let candidates: Vec<&ElfSymbol> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.symbols[i])
            .filter(|s| !code_only || s.code)
            .collect();
        let distinct = |global_only: bool| {
            let addrs: BTreeSet<u64> = candidates
                .iter()
                .filter(|s| !global_only || s.global)
                .map(|s| s.addr)
                .collect();
            addrs.into_iter().collect::<Vec<_>>()
        };
        let all = distinct(false);
        if all.len() <= 1 {
            return Ok(all.first().copied());
        }
        match distinct(true)[..] {
            [addr] => Ok(Some(addr)),
            _ => Err(SymbolError::Ambiguous {
                name: name.into(),
                addresses: all,
            }),
        }
    }

    fn nearest_code(&self, addr: u64) -> Option<&ElfSymbol> {
        let sym = |i: usize| &self.symbols[self.code_by_addr[i]];
        let end = self
            .code_by_addr
            .partition_point(|&i| self.symbols[i].addr <= addr);
        let top = sym(end.checked_sub(1)?).addr;
        // The preferred name of the group at `top` is its first entry.
        let first = self
            .code_by_addr
            .partition_point(|&i| self.symbols[i].addr < top);
        Some(sym(first))
    }

    fn similar_code(&self, name: &str) -> Vec<String> {
        let code = self
            .by_name
            .iter()
            .filter(|(_, idx)| idx.iter().any(|&i| self.symbols[i].code))
            .map(|(n, _)| n.as_str());
        suggest::similar(name, code, SUGGESTIONS)
    }
}
