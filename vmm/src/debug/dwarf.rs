//! Every walk over the DWARF: the one-off scan for inlined functions (cached
//! in the index), struct member offsets and `file:line` lookups (both lazy:
//! they touch only a few units and take milliseconds, see `benches/`).

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use gimli::{
    constants as dw, AttributeValue, DebuggingInformationEntry, EndianSlice, LittleEndian,
    UnitOffset,
};

use super::elf::DwarfSections;
use super::returns::ReturnType;
use super::{suggest, SymbolError};

type R<'a> = EndianSlice<'a, LittleEndian>;
type Dwarf<'a> = gimli::Dwarf<R<'a>>;
type UnitRef<'a, 'b> = gimli::UnitRef<'b, R<'a>>;
type Entry<'a, 'b, 'c> = DebuggingInformationEntry<'b, 'c, R<'a>>;

/// Reads the debug info of one vmlinux; errors carry its path.
pub(crate) struct DebugInfo<'a> {
    path: &'a Path,
    dwarf: Dwarf<'a>,
}

impl<'a> DebugInfo<'a> {
    pub fn new(path: &'a Path, sections: &'a DwarfSections) -> DebugInfo<'a> {
        let load = |id: gimli::SectionId| {
            Ok::<_, Infallible>(R::new(sections.get(id.name()), LittleEndian))
        };
        let Ok(dwarf) = gimli::Dwarf::load(load);
        DebugInfo { path, dwarf }
    }

    fn bad(&self, e: gimli::Error) -> SymbolError {
        SymbolError::BadDwarf {
            path: self.path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// Calls `f` for each compilation unit.
    fn for_each_unit<T>(
        &self,
        mut f: impl FnMut(UnitRef<'a, '_>) -> gimli::Result<Option<T>>,
    ) -> Result<Option<T>, SymbolError> {
        let mut headers = self.dwarf.units();
        while let Some(header) = headers.next().map_err(|e| self.bad(e))? {
            let unit = self.dwarf.unit(header).map_err(|e| self.bad(e))?;
            if let Some(found) = f(unit.unit_ref(&self.dwarf)).map_err(|e| self.bad(e))? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// For every function that is inlined somewhere: the entry addresses of
    /// the out-of-line functions its inlined copies sit in (the outermost
    /// concrete `DW_TAG_subprogram` around each `DW_TAG_inlined_subroutine`).
    pub fn inlined_callers(&self) -> Result<HashMap<String, BTreeSet<u64>>, SymbolError> {
        let mut callers: HashMap<String, BTreeSet<u64>> = HashMap::new();
        self.for_each_unit(|unit| {
            // Origins are resolved after the walk, once per distinct DIE.
            let mut sites: Vec<(UnitOffset, u64)> = Vec::new();
            let mut outer: Option<(isize, u64)> = None;
            let mut depth = 0;
            let mut cursor = unit.entries();
            while let Some((delta, entry)) = cursor.next_dfs()? {
                depth += delta;
                if outer.is_some_and(|(d, _)| depth <= d) {
                    outer = None;
                }
                match (entry.tag(), outer) {
                    (dw::DW_TAG_subprogram, None) => {
                        outer = entry_pc(unit, entry)?.map(|pc| (depth, pc))
                    }
                    (dw::DW_TAG_inlined_subroutine, Some((_, pc))) => {
                        if let Some(AttributeValue::UnitRef(origin)) =
                            entry.attr_value(dw::DW_AT_abstract_origin)?
                        {
                            sites.push((origin, pc));
                        }
                    }
                    _ => {}
                }
            }
            let mut names: HashMap<UnitOffset, Option<String>> = HashMap::new();
            for (origin, pc) in sites {
                let name = match names.entry(origin) {
                    Slot::Occupied(e) => e.into_mut(),
                    Slot::Vacant(e) => e.insert(die_name(unit, origin)?),
                };
                if let Some(name) = name {
                    callers.entry(name.clone()).or_default().insert(pc);
                }
            }
            Ok(None::<Infallible>)
        })?;
        Ok(callers)
    }

    /// Byte offset of `field` in the first complete definition of struct or
    /// union `ty` (or a typedef of one), looking through anonymous members.
    pub fn field_offset(&self, ty: &str, field: &str) -> Result<u64, SymbolError> {
        let mut seen = Vec::new();
        // Outer `Some`: the type was found (only its first definition is
        // searched); inner: the member was found.
        let found = self.for_each_unit(|unit| {
            let mut tree = unit.entries_tree(None)?;
            let root = tree.root()?;
            let mut top = root.children();
            while let Some(node) = top.next()? {
                let entry = node.entry();
                if !matches!(
                    entry.tag(),
                    dw::DW_TAG_structure_type
                        | dw::DW_TAG_union_type
                        | dw::DW_TAG_class_type
                        | dw::DW_TAG_typedef
                ) || entry.attr(dw::DW_AT_declaration)?.is_some()
                    || name(unit, entry)?.as_deref() != Some(ty)
                {
                    continue;
                }
                if let Some(agg) = aggregate(unit, entry.offset())? {
                    return Ok(Some(find_member(unit, agg, field, 0, &mut seen)?));
                }
            }
            Ok(None)
        })?;
        match found {
            Some(Some(Member::Offset(off))) => Ok(off),
            Some(Some(Member::BitField)) => Err(SymbolError::BitField {
                ty: ty.into(),
                field: field.into(),
            }),
            None => Err(SymbolError::NoSuchType { ty: ty.into() }),
            Some(None) => Err(SymbolError::NoSuchField {
                ty: ty.into(),
                field: field.into(),
                suggestions: suggest::similar(field, seen.iter().map(String::as_str), 5),
            }),
        }
    }

    /// Lowest address of an `is_stmt` row for `line` of the one source file
    /// whose path ends with `file` (whole path components).
    pub fn line_address(
        &self,
        file: &str,
        line: u64,
        code: &[Range<u64>],
    ) -> Result<u64, SymbolError> {
        let mut best: Option<u64> = None;
        let mut lines: BTreeSet<u64> = BTreeSet::new();
        self.rows_of_file(file, code, |l, addr| {
            lines.insert(l);
            if l == line {
                best = Some(best.map_or(addr, |b| b.min(addr)));
            }
        })?;
        best.ok_or_else(|| {
            let below = lines.range(..line).rev().take(3);
            let above = lines.range(line..).take(3);
            let mut nearby: Vec<u64> = below.chain(above).copied().collect();
            nearby.sort_unstable();
            SymbolError::NoCodeAtLine {
                file: file.into(),
                line,
                nearby,
            }
        })
    }

    /// `(line, address)` of every `is_stmt` row for one of `lines` of `file` (matched
    /// as in [`DebugInfo::line_address`]), inlined copies included. Lines without
    /// code (comments, declarations) have none.
    pub fn line_addresses(
        &self,
        file: &str,
        lines: &BTreeSet<u64>,
        code: &[Range<u64>],
    ) -> Result<Vec<(u64, u64)>, SymbolError> {
        let mut out = Vec::new();
        self.rows_of_file(file, code, |l, addr| {
            if lines.contains(&l) {
                out.push((l, addr));
            }
        })?;
        Ok(out)
    }

    /// Call `row(line, address)` for every `is_stmt` row in `code` of the one source
    /// file whose path ends with `file`; an unknown or ambiguous file is an error.
    fn rows_of_file(
        &self,
        file: &str,
        code: &[Range<u64>],
        mut row: impl FnMut(u64, u64),
    ) -> Result<(), SymbolError> {
        let base = file.rsplit('/').next().unwrap_or(file);
        let mut matched: BTreeSet<PathBuf> = BTreeSet::new();
        self.for_each_unit(|unit| {
            let Some(program) = unit.line_program.clone() else {
                return Ok(None::<Infallible>);
            };
            let header = program.header();
            // DWARF 5 numbers files from 0, earlier versions from 1.
            let first = u64::from(header.version() < 5);
            let mut wanted = Vec::new();
            for (i, f) in header.file_names().iter().enumerate() {
                let name = unit.attr_string(f.path_name())?;
                // Cheap byte test first: most units do not mention the file.
                if !name.slice().ends_with(base.as_bytes()) {
                    continue;
                }
                let name = name.to_string_lossy();
                let path = match f.directory(header) {
                    Some(dir) => Path::new(&*unit.attr_string(dir)?.to_string_lossy()).join(&*name),
                    None => PathBuf::from(&*name),
                };
                if ends_with(&path, file) {
                    wanted.push(first + i as u64);
                    matched.insert(normalize(&path));
                }
            }
            if wanted.is_empty() {
                return Ok(None);
            }
            let mut rows = program.rows();
            while let Some((_, r)) = rows.next_row()? {
                let addr = r.address();
                let Some(l) = r.line() else { continue };
                if r.end_sequence()
                    || !r.is_stmt()
                    || !wanted.contains(&r.file_index())
                    || !code.iter().any(|c| c.contains(&addr))
                {
                    continue;
                }
                row(l.get(), addr);
            }
            Ok(None)
        })?;
        if matched.is_empty() {
            let names = self.source_basenames()?;
            return Err(SymbolError::NoSuchFile {
                file: file.into(),
                suggestions: suggest::similar(base, names.iter().map(String::as_str), 5),
            });
        }
        if matched.len() > 1 {
            return Err(SymbolError::AmbiguousFile {
                file: file.into(),
                candidates: matched.iter().map(|p| p.display().to_string()).collect(),
            });
        }
        Ok(())
    }

    /// The declared return type of the out-of-line function whose code starts at
    /// `entry`, or None if no subprogram starts there. The unit is found through
    /// `.debug_aranges` when the kernel has it (a few milliseconds), else by a walk.
    pub fn return_type(&self, entry: u64) -> Result<Option<ReturnType>, SymbolError> {
        let unit_offset = self.unit_covering(entry).map_err(|e| self.bad(e))?;
        let in_unit = |unit: UnitRef<'a, '_>| -> gimli::Result<Option<ReturnType>> {
            let mut cursor = unit.entries();
            while let Some((_, die)) = cursor.next_dfs()? {
                if die.tag() == dw::DW_TAG_subprogram && entry_pc(unit, die)? == Some(entry) {
                    return Ok(Some(declared_return(unit, die.offset())?));
                }
            }
            Ok(None)
        };
        match unit_offset {
            Some(offset) => {
                let header = self
                    .dwarf
                    .debug_info
                    .header_from_offset(offset)
                    .map_err(|e| self.bad(e))?;
                let unit = self.dwarf.unit(header).map_err(|e| self.bad(e))?;
                in_unit(unit.unit_ref(&self.dwarf)).map_err(|e| self.bad(e))
            }
            None => self.for_each_unit(in_unit),
        }
    }

    /// The compilation unit whose address ranges cover `addr`, from `.debug_aranges`.
    fn unit_covering(&self, addr: u64) -> gimli::Result<Option<gimli::DebugInfoOffset>> {
        let mut headers = self.dwarf.debug_aranges.headers();
        while let Some(header) = headers.next()? {
            let mut entries = header.entries();
            while let Some(arange) = entries.next()? {
                if arange.range().begin <= addr && addr < arange.range().end {
                    return Ok(Some(header.debug_info_offset()));
                }
            }
        }
        Ok(None)
    }

    /// File names (last component) of every source file in the line tables,
    /// for "did you mean" after a miss.
    fn source_basenames(&self) -> Result<HashSet<String>, SymbolError> {
        let mut names = HashSet::new();
        self.for_each_unit(|unit| {
            if let Some(program) = &unit.line_program {
                for f in program.header().file_names() {
                    let name = unit
                        .attr_string(f.path_name())?
                        .to_string_lossy()
                        .into_owned();
                    names.insert(name.rsplit('/').next().unwrap_or(&name).to_string());
                }
            }
            Ok(None::<Infallible>)
        })?;
        Ok(names)
    }
}

/// `path` ends with the path components of `suffix` (so `rmap.c` matches
/// `mm/rmap.c` but `map.c` does not).
fn ends_with(path: &Path, suffix: &str) -> bool {
    path.ends_with(suffix.trim_start_matches("./"))
}

/// Lexically drops `.` and resolves `..`, so two spellings of one file
/// compare equal.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn name<'a>(unit: UnitRef<'a, '_>, entry: &Entry<'a, '_, '_>) -> gimli::Result<Option<String>> {
    entry
        .attr_value(dw::DW_AT_name)?
        .map(|v| Ok(unit.attr_string(v)?.to_string_lossy().into_owned()))
        .transpose()
}

/// Name of the DIE at `offset`, following `DW_AT_abstract_origin` /
/// `DW_AT_specification` links (a few hops at most in C).
fn die_name(unit: UnitRef<'_, '_>, mut offset: UnitOffset) -> gimli::Result<Option<String>> {
    for _ in 0..4 {
        let entry = unit.entry(offset)?;
        if let Some(n) = name(unit, &entry)? {
            return Ok(Some(n));
        }
        match entry
            .attr_value(dw::DW_AT_abstract_origin)?
            .or(entry.attr_value(dw::DW_AT_specification)?)
        {
            Some(AttributeValue::UnitRef(next)) => offset = next,
            _ => break,
        }
    }
    Ok(None)
}

/// Lowest code address of a subprogram, if it has code.
fn entry_pc<'a>(unit: UnitRef<'a, '_>, entry: &Entry<'a, '_, '_>) -> gimli::Result<Option<u64>> {
    if let Some(v) = entry.attr_value(dw::DW_AT_low_pc)? {
        return unit.attr_address(v);
    }
    if entry.attr(dw::DW_AT_ranges)?.is_none() {
        return Ok(None);
    }
    let mut ranges = unit.die_ranges(entry)?;
    let mut low = None;
    while let Some(r) = ranges.next()? {
        low = Some(low.map_or(r.begin, |l: u64| l.min(r.begin)));
    }
    Ok(low)
}

/// The return type of the subprogram at `offset`: its `DW_AT_type`, found on it or on
/// the declaration it completes, classified by how the value is returned.
fn declared_return(unit: UnitRef<'_, '_>, mut offset: UnitOffset) -> gimli::Result<ReturnType> {
    let mut ty = None;
    for _ in 0..4 {
        let die = unit.entry(offset)?;
        if let Some(AttributeValue::UnitRef(t)) = die.attr_value(dw::DW_AT_type)? {
            ty = Some(t);
            break;
        }
        match die
            .attr_value(dw::DW_AT_abstract_origin)?
            .or(die.attr_value(dw::DW_AT_specification)?)
        {
            Some(AttributeValue::UnitRef(next)) => offset = next,
            _ => break,
        }
    }
    let Some(mut ty) = ty else {
        return Ok(ReturnType::Void);
    };
    for _ in 0..8 {
        let die = unit.entry(ty)?;
        let bytes = || -> gimli::Result<u64> {
            Ok(die
                .attr_value(dw::DW_AT_byte_size)?
                .and_then(|v| v.udata_value())
                .unwrap_or(0))
        };
        return Ok(match die.tag() {
            dw::DW_TAG_typedef
            | dw::DW_TAG_const_type
            | dw::DW_TAG_volatile_type
            | dw::DW_TAG_restrict_type
            | dw::DW_TAG_atomic_type => match die.attr_value(dw::DW_AT_type)? {
                Some(AttributeValue::UnitRef(next)) => {
                    ty = next;
                    continue;
                }
                _ => ReturnType::Void,
            },
            dw::DW_TAG_pointer_type => ReturnType::Pointer,
            dw::DW_TAG_enumeration_type => ReturnType::Integer {
                bytes: bytes()?,
                signed: true,
            },
            dw::DW_TAG_base_type => match die.attr_value(dw::DW_AT_encoding)? {
                Some(AttributeValue::Encoding(dw::DW_ATE_boolean)) => ReturnType::Bool,
                Some(AttributeValue::Encoding(dw::DW_ATE_signed | dw::DW_ATE_signed_char)) => {
                    ReturnType::Integer {
                        bytes: bytes()?,
                        signed: true,
                    }
                }
                Some(AttributeValue::Encoding(dw::DW_ATE_unsigned | dw::DW_ATE_unsigned_char)) => {
                    ReturnType::Integer {
                        bytes: bytes()?,
                        signed: false,
                    }
                }
                _ => ReturnType::Unsupported("a floating-point or other non-integer value".into()),
            },
            dw::DW_TAG_structure_type => ReturnType::Unsupported("a struct".into()),
            dw::DW_TAG_union_type => ReturnType::Unsupported("a union".into()),
            other => ReturnType::Unsupported(format!("a {other} value")),
        });
    }
    Ok(ReturnType::Unsupported(
        "a type behind too many typedefs".into(),
    ))
}

/// The struct/union behind `offset`, looking through typedefs and
/// qualifiers.
fn aggregate(unit: UnitRef<'_, '_>, mut offset: UnitOffset) -> gimli::Result<Option<UnitOffset>> {
    for _ in 0..8 {
        let entry = unit.entry(offset)?;
        match entry.tag() {
            dw::DW_TAG_structure_type | dw::DW_TAG_union_type | dw::DW_TAG_class_type => {
                return Ok(Some(offset))
            }
            dw::DW_TAG_typedef | dw::DW_TAG_const_type | dw::DW_TAG_volatile_type => {
                match entry.attr_value(dw::DW_AT_type)? {
                    Some(AttributeValue::UnitRef(next)) => offset = next,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

enum Member {
    Offset(u64),
    BitField,
}

/// Searches the members of the aggregate at `agg` (at byte `base` in the
/// outer type); anonymous struct/union members are searched recursively.
/// Names passed over go to `seen`, for suggestions.
fn find_member(
    unit: UnitRef<'_, '_>,
    agg: UnitOffset,
    field: &str,
    base: u64,
    seen: &mut Vec<String>,
) -> gimli::Result<Option<Member>> {
    let mut tree = unit.entries_tree(Some(agg))?;
    let root = tree.root()?;
    let mut members = root.children();
    while let Some(node) = members.next()? {
        let entry = node.entry();
        if entry.tag() != dw::DW_TAG_member {
            continue;
        }
        // Union members have no location: they sit at offset 0.
        let off = base + member_location(unit, entry)?.unwrap_or(0);
        match name(unit, entry)? {
            Some(n) if n == field => {
                return Ok(Some(if entry.attr(dw::DW_AT_bit_size)?.is_some() {
                    Member::BitField
                } else {
                    Member::Offset(off)
                }));
            }
            Some(n) => seen.push(n),
            None => {
                let Some(AttributeValue::UnitRef(t)) = entry.attr_value(dw::DW_AT_type)? else {
                    continue;
                };
                if let Some(inner) = aggregate(unit, t)? {
                    if let Some(found) = find_member(unit, inner, field, off, seen)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// `DW_AT_data_member_location`: a constant, or (DWARF 2 style) a
/// `DW_OP_plus_uconst` expression.
fn member_location<'a>(
    unit: UnitRef<'a, '_>,
    entry: &Entry<'a, '_, '_>,
) -> gimli::Result<Option<u64>> {
    let Some(attr) = entry.attr(dw::DW_AT_data_member_location)? else {
        return Ok(None);
    };
    if let Some(v) = attr.udata_value() {
        return Ok(Some(v));
    }
    if let AttributeValue::Exprloc(expr) = attr.value() {
        let mut ops = expr.operations(unit.encoding());
        if let Some(gimli::Operation::PlusConstant { value }) = ops.next()? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}
