//! The guest kernel's image: its sections and symbols (functions, data
//! objects, assembly labels), lookups by name and by address, and each
//! function's source file and subsystem.
//!
//! Built from the debug vmlinux ([`elf`] for symbols and sections,
//! [`dwarf`] for source files), then kept as a compact index file next to
//! the vmlinux ([`index`]), keyed by the vmlinux's size and mtime: parsing
//! 630 MB of ELF and DWARF once costs seconds, loading the index afterwards
//! costs milliseconds. The guest boots with `nokaslr`, so these link-time
//! addresses are the run-time ones.

pub mod code;
pub mod dwarf;
pub mod elf;
pub mod index;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::dwarf::{DwarfError, UnitSources};
use self::elf::ElfError;
use self::index::{IndexError, IndexKey};

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ELF structures are unusable.
    #[error("{path}: {source}")]
    Elf {
        /// The vmlinux.
        path: PathBuf,
        /// Why.
        source: ElfError,
    },
    /// The DWARF is unusable.
    #[error("{path}: DWARF: {source}")]
    Dwarf {
        /// The vmlinux.
        path: PathBuf,
        /// Why.
        source: DwarfError,
    },
    /// An index file is unusable (only from [`KernelImage::read_index`];
    /// [`KernelImage::load`] rebuilds instead).
    #[error("index {path}: {source}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// Why.
        source: IndexError,
    },
}

/// A loaded (`SHF_ALLOC`) section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name (`.text`, `.rodata`, `.data`, `.bss`, `.init.text`...).
    pub name: String,
    /// Virtual address (0 for `.data..percpu`, whose symbols are offsets).
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Writable at run time.
    pub writable: bool,
    /// Holds code.
    pub executable: bool,
}

impl Section {
    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.address != 0 && addr >= self.address && addr - self.address < self.size
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.address.saturating_add(self.size)
    }
}

/// What a symbol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SymbolKind {
    /// `STT_FUNC`: a C function or a typed assembly function.
    Function,
    /// `STT_NOTYPE` in code: an assembly entry point or label.
    Label,
    /// `STT_OBJECT`: a variable.
    Object,
}

impl SymbolKind {
    fn code(self) -> u8 {
        match self {
            SymbolKind::Function => 0,
            SymbolKind::Label => 1,
            SymbolKind::Object => 2,
        }
    }

    fn from_code(code: u8) -> Option<SymbolKind> {
        [SymbolKind::Function, SymbolKind::Label, SymbolKind::Object].get(usize::from(code)).copied()
    }
}

/// A symbol, borrowed from its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Name.
    pub name: &'a str,
    /// Address (an offset for per-CPU variables).
    pub address: u64,
    /// Size in bytes (0 for plain labels).
    pub size: u64,
    /// Kind.
    pub kind: SymbolKind,
    /// The section it lives in.
    pub section: &'a Section,
    /// Source file relative to the kernel tree (`mm/slub.c`), for code
    /// covered by DWARF.
    pub source: Option<&'a str>,
}

impl<'a> Symbol<'a> {
    /// Whether `addr` lies inside the symbol (never for size-0 labels).
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.address && addr - self.address < self.size
    }

    /// The subsystem: top-level directory of the source file (`kernel`,
    /// `mm`, `fs`, `net`, `drivers`, `arch`...).
    pub fn subsystem(&self) -> Option<&'a str> {
        self.source.and_then(dwarf::subsystem)
    }
}

/// No source file.
const NO_FILE: u32 = u32::MAX;

/// One symbol in the index: fixed size, names in one shared string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address: u64,
    size: u64,
    name_off: u32,
    name_len: u32,
    file: u32,
    section: u16,
    kind: SymbolKind,
}

/// The symbols and sections of one kernel build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    build_id: Vec<u8>,
    sections: Vec<Section>,
    files: Vec<String>,
    names: String,
    /// Sorted by address, then kind (functions first), then larger size first.
    entries: Vec<Entry>,
    /// Entry indices sorted by name, then kind, then address.
    by_name: Vec<u32>,
}

/// How [`KernelImage::load_with`] finds or builds the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where the index lives; `None`: next to the vmlinux, as
    /// `<vmlinux>.kfi-index`.
    pub index_path: Option<PathBuf>,
    /// Read source files from DWARF (adds seconds to the first load only).
    pub sources: bool,
    /// Ignore an existing index and build it again.
    pub rebuild: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { index_path: None, sources: true, rebuild: false }
    }
}

/// Whether the index was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    /// A fresh index was loaded.
    Cached,
    /// The vmlinux was parsed; `written` says whether the index was saved.
    Built {
        /// The index file was written.
        written: bool,
    },
}

/// What a load did and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The index file.
    pub index_path: PathBuf,
    /// Cached or built.
    pub used: IndexUse,
    /// Wall time of the whole load.
    pub elapsed: Duration,
    /// Symbols in the image.
    pub symbols: usize,
    /// Distinct source files known.
    pub source_files: usize,
}

impl KernelImage {
    /// Loads the image of a debug vmlinux with the default options.
    pub fn load(vmlinux: &Path) -> Result<KernelImage, ImageError> {
        KernelImage::load_with(vmlinux, &LoadOptions::default()).map(|(image, _)| image)
    }

    /// Loads from the index when it matches the vmlinux's size and mtime,
    /// else parses the vmlinux and writes the index (atomically; a
    /// read-only directory only costs the speed-up).
    pub fn load_with(vmlinux: &Path, options: &LoadOptions) -> Result<(KernelImage, LoadReport), ImageError> {
        let started = Instant::now();
        let meta = std::fs::metadata(vmlinux).map_err(|source| ImageError::Io {
            action: "stat",
            path: vmlinux.to_path_buf(),
            source,
        })?;
        let key = IndexKey::of(&meta, options.sources);
        let index_path = options.index_path.clone().unwrap_or_else(|| index::default_path(vmlinux));
        let report = |image: &KernelImage, used| LoadReport {
            index_path: index_path.clone(),
            used,
            elapsed: started.elapsed(),
            symbols: image.entries.len(),
            source_files: image.files.len(),
        };
        if !options.rebuild {
            match std::fs::read(&index_path) {
                Ok(bytes) => match index::decode(&bytes) {
                    Ok((stored, image)) if stored.satisfies(&key) => {
                        let report = report(&image, IndexUse::Cached);
                        tracing::debug!(?report, "kernel image from index");
                        return Ok((image, report));
                    }
                    Ok(_) => tracing::info!(path = %index_path.display(), "symbol index is stale; rebuilding"),
                    Err(e) => tracing::warn!(path = %index_path.display(), %e, "symbol index unusable; rebuilding"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %index_path.display(), %e, "cannot read the symbol index; rebuilding"),
            }
        }
        let image = KernelImage::parse(vmlinux, options.sources)?;
        let written = match index::write_atomic(&index_path, &index::encode(&image, &key)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %index_path.display(), %e, "cannot save the symbol index; later loads parse the vmlinux again");
                false
            }
        };
        let report = report(&image, IndexUse::Built { written });
        tracing::info!(?report, "kernel image built from the vmlinux");
        Ok((image, report))
    }

    /// Parses a vmlinux without any index. `sources` adds DWARF source
    /// files; a file without DWARF yields an image without them.
    pub fn parse(vmlinux: &Path, sources: bool) -> Result<KernelImage, ImageError> {
        let file = File::open(vmlinux).map_err(|source| ImageError::Io {
            action: "open",
            path: vmlinux.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only and private to this call; kernels in
        // the cache are never modified in place (they are replaced by
        // rename), so the bytes cannot change under the parser.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ImageError::Io {
            action: "map",
            path: vmlinux.to_path_buf(),
            source,
        })?;
        let contents = elf::read(&map).map_err(|source| ImageError::Elf { path: vmlinux.to_path_buf(), source })?;
        let units = if sources {
            match dwarf::unit_sources(&map, &contents.debug_sections) {
                Ok(units) => units,
                Err(DwarfError::NoDebugInfo) => {
                    tracing::info!(path = %vmlinux.display(), "no DWARF: functions get no source file");
                    UnitSources::default()
                }
                Err(source) => return Err(ImageError::Dwarf { path: vmlinux.to_path_buf(), source }),
            }
        } else {
            UnitSources::default()
        };
        Ok(KernelImage::build(contents, &units))
    }

    /// Reads an index file, whatever vmlinux it was built from.
    pub fn read_index(path: &Path) -> Result<KernelImage, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        index::decode(&bytes)
            .map(|(_, image)| image)
            .map_err(|source| ImageError::Index { path: path.to_path_buf(), source })
    }

    fn build(contents: elf::ElfContents<'_>, units: &UnitSources) -> KernelImage {
        let mut names = String::new();
        let mut entries = Vec::with_capacity(contents.symbols.len());
        for sym in &contents.symbols {
            let name_off = names.len() as u32;
            names.push_str(sym.name);
            let file = match sym.kind {
                SymbolKind::Function | SymbolKind::Label => units.file_at(sym.address).unwrap_or(NO_FILE),
                SymbolKind::Object => units.variable_file(sym.address).unwrap_or(NO_FILE),
            };
            entries.push(Entry {
                address: sym.address,
                size: sym.size,
                name_off,
                name_len: sym.name.len() as u32,
                file,
                section: sym.section,
                kind: sym.kind,
            });
        }
        entries.sort_unstable_by(|a, b| {
            (a.address, a.kind, std::cmp::Reverse(a.size)).cmp(&(b.address, b.kind, std::cmp::Reverse(b.size)))
        });
        let mut image = KernelImage {
            build_id: contents.build_id,
            sections: contents.sections,
            files: units.files.clone(),
            names,
            entries,
            by_name: Vec::new(),
        };
        let mut by_name: Vec<u32> = (0..image.entries.len() as u32).collect();
        by_name.sort_by(|&a, &b| {
            let (ea, eb) = (&image.entries[a as usize], &image.entries[b as usize]);
            (image.name(ea), ea.kind, ea.address).cmp(&(image.name(eb), eb.kind, eb.address))
        });
        image.by_name = by_name;
        image
    }

    fn name(&self, e: &Entry) -> &str {
        let start = e.name_off as usize;
        self.names.get(start..start + e.name_len as usize).unwrap_or("")
    }

    fn symbol_of(&self, e: &Entry) -> Option<Symbol<'_>> {
        Some(Symbol {
            name: self.name(e),
            address: e.address,
            size: e.size,
            kind: e.kind,
            section: self.sections.get(usize::from(e.section))?,
            source: self.files.get(e.file as usize).map(String::as_str),
        })
    }

    /// The GNU build-id of the vmlinux (empty if it had none).
    pub fn build_id(&self) -> &[u8] {
        &self.build_id
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no symbols.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All loaded sections.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// A section by name (`.text`, `.rodata`, `.data`, `.bss`).
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section holding `addr`.
    pub fn section_at(&self, addr: u64) -> Option<&Section> {
        self.sections.iter().find(|s| s.contains(addr))
    }

    /// Whether `addr` is in kernel code (`.text`, `.init.text`, ...).
    pub fn is_text(&self, addr: u64) -> bool {
        self.section_at(addr).is_some_and(|s| s.executable)
    }

    /// The best symbol of this name: a function if there is one, else the
    /// lowest address (static symbols can repeat across files).
    pub fn symbol(&self, name: &str) -> Option<Symbol<'_>> {
        self.named(name).first().and_then(|&i| self.symbol_of(&self.entries[i as usize]))
    }

    /// Indices (into `entries`) of the symbols with this name, in `by_name` order.
    fn named(&self, name: &str) -> &[u32] {
        let first = self.by_name.partition_point(|&i| self.name(&self.entries[i as usize]) < name);
        let len = self.by_name[first..].partition_point(|&i| self.name(&self.entries[i as usize]) == name);
        &self.by_name[first..first + len]
    }

    /// Every symbol of this name, functions first.
    pub fn symbols_named(&self, name: &str) -> impl Iterator<Item = Symbol<'_>> + '_ {
        self.named(name).iter().filter_map(|&i| self.symbol_of(&self.entries[i as usize]))
    }

    /// A function by name.
    pub fn function(&self, name: &str) -> Option<Symbol<'_>> {
        self.named(name)
            .iter()
            .map(|&i| &self.entries[i as usize])
            .find(|e| e.kind == SymbolKind::Function)
            .and_then(|e| self.symbol_of(e))
    }

    /// All functions, by address.
    pub fn functions(&self) -> impl Iterator<Item = Symbol<'_>> + '_ {
        self.entries.iter().filter(|e| e.kind == SymbolKind::Function).filter_map(|e| self.symbol_of(e))
    }

    /// All symbols, by address.
    pub fn symbols(&self) -> impl Iterator<Item = Symbol<'_>> + '_ {
        self.entries.iter().filter_map(|e| self.symbol_of(e))
    }

    /// The symbol containing `addr`: a function if one does, else any
    /// sized symbol, else the nearest label before it in the same code
    /// section (assembly without sizes).
    pub fn symbol_at(&self, addr: u64) -> Option<Symbol<'_>> {
        // Symbols nest rarely (aliases, labels inside functions); a short
        // backwards scan finds the container without an interval tree.
        const SCAN: usize = 64;
        let end = self.entries.partition_point(|e| e.address <= addr);
        let section = self.section_at(addr)?;
        let mut other = None;
        let mut label: Option<Symbol<'_>> = None;
        let mut labels_done = false;
        for e in self.entries[..end].iter().rev().take(SCAN) {
            let Some(sym) = self.symbol_of(e) else { continue };
            if sym.section != section {
                break;
            }
            if sym.contains(addr) {
                if sym.kind == SymbolKind::Function {
                    return Some(sym);
                }
                other = other.or(Some(sym));
            } else if sym.size == 0 && sym.kind == SymbolKind::Label {
                if !labels_done {
                    label = label.or(Some(sym));
                }
            } else if sym.size > 0 {
                // A sized symbol that ended before `addr`: a label inside it
                // belongs to it, and labels further back are further away.
                if label.is_some_and(|l| sym.contains(l.address)) {
                    label = None;
                }
                labels_done = true;
            }
        }
        other.or(label)
    }

    /// `name+0xoff` for an address, as the kernel prints it.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.symbol_at(addr).map(|s| format!("{}+{:#x}", s.name, addr - s.address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> KernelImage {
        let text = Section { name: ".text".into(), address: 0x1000, size: 0x1000, writable: false, executable: true };
        let data = Section { name: ".data".into(), address: 0x4000, size: 0x100, writable: true, executable: false };
        let raw = |name, address, size, kind, section| elf::RawSymbol { name, address, size, kind, section };
        let contents = elf::ElfContents {
            build_id: vec![0xeb, 0x4f],
            sections: vec![text, data],
            symbols: vec![
                raw("do_work", 0x1100, 0x80, SymbolKind::Function, 0),
                raw("do_work_alias", 0x1100, 0x80, SymbolKind::Object, 0),
                raw(".inner", 0x1120, 0, SymbolKind::Label, 0),
                raw("entry_asm", 0x1400, 0, SymbolKind::Label, 0),
                raw("helper", 0x1200, 0x10, SymbolKind::Function, 0),
                raw("helper", 0x1300, 0x10, SymbolKind::Function, 0),
                raw("counter", 0x4010, 8, SymbolKind::Object, 1),
            ],
            debug_sections: Vec::new(),
        };
        let units = UnitSources {
            files: vec!["kernel/work.c".into()],
            ranges: vec![(0x1000, 0x1280, 0)],
            variables: Vec::new(),
        };
        KernelImage::build(contents, &units)
    }

    #[test]
    fn lookups_by_name_and_address() {
        let img = sample();
        assert_eq!(img.symbol("do_work").unwrap().address, 0x1100);
        assert_eq!(img.symbols_named("helper").map(|s| s.address).collect::<Vec<_>>(), [0x1200, 0x1300]);
        assert_eq!(img.symbolize(0x1100).as_deref(), Some("do_work+0x0"));
        // A label inside a function does not hide the function.
        assert_eq!(img.symbolize(0x1130).as_deref(), Some("do_work+0x30"));
        // Past the end of a function: a label inside it does not claim the gap.
        assert_eq!(img.symbolize(0x1190), None);
        // Unsized assembly: the nearest label.
        assert_eq!(img.symbolize(0x1432).as_deref(), Some("entry_asm+0x32"));
        assert_eq!(img.symbolize(0x4014).as_deref(), Some("counter+0x4"));
        assert_eq!(img.symbolize(0x9000), None);
        assert!(img.is_text(0x1100) && !img.is_text(0x4010));
    }

    #[test]
    fn sources_and_subsystems() {
        let img = sample();
        let f = img.function("do_work").unwrap();
        assert_eq!((f.source, f.subsystem()), (Some("kernel/work.c"), Some("kernel")));
        assert_eq!(img.symbol("counter").unwrap().source, None);
        assert_eq!(img.symbols_named("helper").map(|s| s.source).collect::<Vec<_>>(), [Some("kernel/work.c"), None]);
    }
}
