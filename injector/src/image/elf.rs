//! Reading the debug vmlinux's ELF: allocated sections, the symbols worth
//! keeping (functions, objects, code labels) and the GNU build-id.
//!
//! Only the ELF header, section headers, symbol and string tables and the
//! note section are touched: goblin's full `Elf::parse` would also walk the
//! 100+ relocation sections a `--emit-relocs` kernel carries.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB};
use goblin::elf::section_header::{SectionHeader, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOTE, SHT_SYMTAB};
use goblin::elf::sym::{Symtab, STT_FUNC, STT_NOTYPE, STT_OBJECT};
use goblin::elf::Elf;
use goblin::strtab::Strtab;

use super::{Section, SymbolKind};

/// Why the ELF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// goblin rejected a structure.
    #[error("{what}: {source}")]
    Parse {
        /// Which structure.
        what: &'static str,
        /// Why.
        source: goblin::error::Error,
    },
    /// Not a 64-bit little-endian ELF (the x86-64 kernel is both).
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    /// There is no symbol table (a stripped vmlinux, or the bzImage).
    #[error("no symbol table: is this the debug vmlinux (from the -dbg package)?")]
    NoSymtab,
}

/// A symbol as read, before indexing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSymbol<'a> {
    /// Name.
    pub name: &'a str,
    /// Address.
    pub address: u64,
    /// Size in bytes (0 for plain labels).
    pub size: u64,
    /// Kind.
    pub kind: SymbolKind,
    /// Index into the returned section list.
    pub section: u16,
}

/// What the ELF file yields.
#[derive(Debug)]
pub struct ElfContents<'a> {
    /// The GNU build-id, empty if absent.
    pub build_id: Vec<u8>,
    /// Allocated sections in file order.
    pub sections: Vec<Section>,
    /// Kept symbols, unsorted.
    pub symbols: Vec<RawSymbol<'a>>,
    /// The `.debug_*` sections for the DWARF reader: (name, file offset, size).
    pub debug_sections: Vec<(&'a str, u64, u64)>,
}

/// Reads sections, symbols and build-id from the bytes of a vmlinux.
pub fn read(bytes: &[u8]) -> Result<ElfContents<'_>, ElfError> {
    let parse = |what| move |source| ElfError::Parse { what, source };
    let header = Elf::parse_header(bytes).map_err(parse("ELF header"))?;
    if header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(ElfError::NotElf64);
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let headers = SectionHeader::parse(bytes, header.e_shoff as usize, header.e_shnum as usize, ctx)
        .map_err(parse("section headers"))?;
    let shstr = headers.get(header.e_shstrndx as usize).ok_or(ElfError::Parse {
        what: "section name table",
        source: goblin::error::Error::Malformed("e_shstrndx out of range".into()),
    })?;
    let shstrtab = Strtab::parse(bytes, shstr.sh_offset as usize, shstr.sh_size as usize, 0)
        .map_err(parse("section name table"))?;
    let name_of = |sh: &SectionHeader| shstrtab.get_at(sh.sh_name).unwrap_or("");

    // Allocated sections keep their ELF index so symbols can point at them.
    let mut sections = Vec::new();
    let mut section_of_elf = vec![None; headers.len()];
    let mut debug_sections = Vec::new();
    let mut build_id = Vec::new();
    for (i, sh) in headers.iter().enumerate() {
        let name = name_of(sh);
        if sh.sh_flags & u64::from(SHF_ALLOC) != 0 && !name.is_empty() {
            section_of_elf[i] = u16::try_from(sections.len()).ok();
            sections.push(Section {
                name: name.to_string(),
                address: sh.sh_addr,
                size: sh.sh_size,
                writable: sh.sh_flags & u64::from(SHF_WRITE) != 0,
                executable: sh.sh_flags & u64::from(SHF_EXECINSTR) != 0,
            });
        }
        if name.starts_with(".debug_") {
            debug_sections.push((name, sh.sh_offset, sh.sh_size));
        }
        if sh.sh_type == SHT_NOTE && build_id.is_empty() {
            let start = sh.sh_offset as usize;
            if let Some(notes) = bytes.get(start..start.saturating_add(sh.sh_size as usize)) {
                build_id = gnu_build_id(notes).unwrap_or_default();
            }
        }
    }

    let symtab_header = headers.iter().rfind(|sh| sh.sh_type == SHT_SYMTAB).ok_or(ElfError::NoSymtab)?;
    let count = (symtab_header.sh_size / symtab_header.sh_entsize.max(1)) as usize;
    let symtab = Symtab::parse(bytes, symtab_header.sh_offset as usize, count, ctx).map_err(parse("symbol table"))?;
    let strtab_header = headers.get(symtab_header.sh_link as usize).ok_or(ElfError::Parse {
        what: "symbol string table",
        source: goblin::error::Error::Malformed("sh_link of .symtab out of range".into()),
    })?;
    let strtab = Strtab::parse(bytes, strtab_header.sh_offset as usize, strtab_header.sh_size as usize, 0)
        .map_err(parse("symbol string table"))?;

    let mut symbols = Vec::with_capacity(count / 2);
    for sym in symtab.iter() {
        let Some(section) = section_of_elf.get(sym.st_shndx).copied().flatten() else {
            continue; // undefined, absolute, or in a section that is not loaded
        };
        let kind = match sym.st_type() {
            STT_FUNC => SymbolKind::Function,
            STT_OBJECT => SymbolKind::Object,
            // Untyped symbols in code are assembly entry points
            // (entry_SYSCALL_64...); elsewhere they are export-table markers
            // (__kstrtab_*, __ksymtab_*) that only bloat the index.
            STT_NOTYPE if sections[usize::from(section)].executable => SymbolKind::Label,
            _ => continue,
        };
        let Some(name) = strtab.get_at(sym.st_name).filter(|n| !n.is_empty() && !n.starts_with(".L")) else {
            continue;
        };
        symbols.push(RawSymbol { name, address: sym.st_value, size: sym.st_size, kind, section });
    }
    Ok(ElfContents { build_id, sections, symbols, debug_sections })
}

/// The descriptor of the `GNU`/`NT_GNU_BUILD_ID` note in a note section.
fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| b.get(at..at + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad4(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name.strip_suffix(b"\0").unwrap_or(name) == b"GNU" {
            return Some(desc.to_vec());
        }
        notes = notes.get(desc_at + pad4(descsz)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend_from_slice(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn build_id_is_found_after_other_notes() {
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"GNU\0", 3, &[0xeb, 0x4f, 0xbc]));
        assert_eq!(gnu_build_id(&notes), Some(vec![0xeb, 0x4f, 0xbc]));
        assert_eq!(gnu_build_id(&notes[..20]), None);
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, b"x")), None);
    }

    #[test]
    fn non_elf_input_is_an_error_not_a_panic() {
        assert!(read(b"not an elf file at all, but long enough to hold a header..............").is_err());
        assert!(read(b"").is_err());
    }
}
