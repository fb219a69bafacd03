//! The kernel's code bytes as linked, from the vmlinux file, and the places
//! the kernel rewrites while it boots.
//!
//! Code faults need the original bytes of the instruction they mutate. The
//! guest boots with `nokaslr` and the vmlinux is fully linked, so the file's
//! bytes at a virtual address are the guest's, except where the kernel
//! patches itself at boot: alternatives (`.altinstructions`), paravirt
//! sites (`.parainstructions`), static keys (`__jump_table`), static calls
//! (`.static_call_sites`), ftrace's `call __fentry__` sites (`__mcount_loc`),
//! retpoline and return-thunk sites (`.retpoline_sites`, `.return_sites`)
//! and `lock` prefixes dropped on one CPU (`.smp_locks`). Those sites are
//! read from the tables the kernel itself walks, so fault generation can
//! skip them; the injector still compares the live bytes before writing.

use std::fs::File;
use std::path::{Path, PathBuf};

use goblin::container::{Container, Ctx};
use goblin::elf::section_header::{SectionHeader, SHT_NOBITS};
use goblin::elf::sym::Symtab;
use goblin::elf::Elf;
use goblin::strtab::Strtab;

/// Why the code of a vmlinux cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The file cannot be opened or mapped.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The vmlinux.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ELF headers are unusable.
    #[error("{path}: {what}: {detail}")]
    Elf {
        /// The vmlinux.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// A section with contents in the file.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    address: u64,
    size: u64,
    offset: u64,
}

/// The code bytes of a vmlinux and its boot-time patch sites.
pub struct KernelCode {
    path: PathBuf,
    map: memmap2::Mmap,
    sections: Vec<Mapped>,
    /// Half-open ranges `[start, end)` the kernel may rewrite at boot, sorted
    /// by start.
    patched: Vec<(u64, u64)>,
}

impl std::fmt::Debug for KernelCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCode")
            .field("path", &self.path)
            .field("sections", &self.sections.len())
            .field("patched", &self.patched.len())
            .finish()
    }
}

/// Reads one entry of a patch-site table (its bytes, its address) into the
/// patched range `[start, end)`.
type SiteReader = fn(&[u8], u64) -> Option<(u64, u64)>;
/// A table: its `[start, end)` when present, its entry size, its reader.
type SiteTable = (Option<(u64, u64)>, u64, SiteReader);

fn s32_at(b: &[u8], at: usize) -> Option<i64> {
    b.get(at..at + 4).map(|w| i64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]])))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes)
}

/// A relative `s32` at the entry's start pointing at `len` bytes of code.
fn relative(len: u64) -> impl Fn(&[u8], u64) -> Option<(u64, u64)> {
    move |b, at| {
        let site = at.checked_add_signed(s32_at(b, 0)?)?;
        Some((site, site + len))
    }
}

// The longest instruction: the upper bound where a table gives no length.
const MAX_INSN: u64 = 15;

fn alt_instr(b: &[u8], at: u64) -> Option<(u64, u64)> {
    // struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen; }
    let site = at.checked_add_signed(s32_at(b, 0)?)?;
    Some((site, site + u64::from(*b.get(10)?)))
}

fn para_site(b: &[u8], _at: u64) -> Option<(u64, u64)> {
    // struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }
    let site = u64_at(b, 0)?;
    Some((site, site + u64::from(*b.get(9)?)))
}

fn absolute_call(b: &[u8], _at: u64) -> Option<(u64, u64)> {
    let site = u64_at(b, 0)?;
    Some((site, site + 5))
}

impl KernelCode {
    /// Maps the vmlinux and reads its patch-site tables.
    pub fn open(vmlinux: &Path) -> Result<KernelCode, CodeError> {
        let io = |action| move |source| CodeError::Io { action, path: vmlinux.to_path_buf(), source };
        let elf_err = |what, detail: String| CodeError::Elf { path: vmlinux.to_path_buf(), what, detail };
        let file = File::open(vmlinux).map_err(io("open"))?;
        // SAFETY: read-only private map; cached kernels are replaced by
        // rename, never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("map"))?;
        let header = Elf::parse_header(&map).map_err(|e| elf_err("ELF header", e.to_string()))?;
        let ctx = Ctx::new(Container::Big, goblin::container::Endian::Little);
        let headers = SectionHeader::parse(&map, header.e_shoff as usize, header.e_shnum as usize, ctx)
            .map_err(|e| elf_err("section headers", e.to_string()))?;
        let shstr = headers
            .get(header.e_shstrndx as usize)
            .ok_or_else(|| elf_err("section name table", "e_shstrndx out of range".into()))?;
        let shstrtab = Strtab::parse(&map, shstr.sh_offset as usize, shstr.sh_size as usize, 0)
            .map_err(|e| elf_err("section name table", e.to_string()))?;
        let sections: Vec<Mapped> = headers
            .iter()
            .filter(|s| s.sh_type != SHT_NOBITS && s.sh_addr != 0 && s.sh_size > 0)
            .map(|s| Mapped { address: s.sh_addr, size: s.sh_size, offset: s.sh_offset })
            .collect();
        let named: Vec<(String, u64, u64)> = headers
            .iter()
            .map(|s| (shstrtab.get_at(s.sh_name).unwrap_or("").to_string(), s.sh_addr, s.sh_addr + s.sh_size))
            .collect();
        let section_range = |name: &str| named.iter().find(|(n, _, _)| n == name).map(|&(_, start, end)| (start, end));

        // Tables that live inside .data/.init.data have only their
        // __start/__stop symbols to bound them.
        let wanted = [
            "__start___jump_table",
            "__stop___jump_table",
            "__start_static_call_sites",
            "__stop_static_call_sites",
            "__start_mcount_loc",
            "__stop_mcount_loc",
        ];
        let mut found = [None::<u64>; 6];
        if let Some(symtab_header) = headers.iter().rfind(|sh| sh.sh_type == goblin::elf::section_header::SHT_SYMTAB) {
            let count = (symtab_header.sh_size / symtab_header.sh_entsize.max(1)) as usize;
            let symtab = Symtab::parse(&map, symtab_header.sh_offset as usize, count, ctx)
                .map_err(|e| elf_err("symbol table", e.to_string()))?;
            if let Some(strtab_header) = headers.get(symtab_header.sh_link as usize) {
                let strtab = Strtab::parse(&map, strtab_header.sh_offset as usize, strtab_header.sh_size as usize, 0)
                    .map_err(|e| elf_err("symbol string table", e.to_string()))?;
                for sym in symtab.iter() {
                    if let Some(i) = strtab.get_at(sym.st_name).and_then(|n| wanted.iter().position(|w| *w == n)) {
                        found[i] = Some(sym.st_value);
                    }
                }
            }
        }
        let pair = |i: usize| found[i].zip(found[i + 1]);

        let mut code = KernelCode { path: vmlinux.to_path_buf(), map, sections, patched: Vec::new() };
        let tables: [SiteTable; 8] = [
            (section_range(".altinstructions"), 12, alt_instr),
            (section_range(".parainstructions"), 16, para_site),
            (section_range(".retpoline_sites"), 4, |b, at| relative(6)(b, at)),
            (section_range(".return_sites"), 4, |b, at| relative(5)(b, at)),
            (section_range(".smp_locks"), 4, |b, at| relative(1)(b, at)),
            (pair(0), 16, |b, at| relative(5)(b, at)),
            (pair(2), 8, |b, at| relative(5)(b, at)),
            (pair(4), 8, absolute_call),
        ];
        let mut patched = Vec::new();
        for (range, entry, read) in tables {
            let Some((start, end)) = range else { continue };
            let Some(bytes) = code.bytes(start, (end.saturating_sub(start)) as usize) else { continue };
            for (i, chunk) in bytes.chunks_exact(entry as usize).enumerate() {
                if let Some((s, e)) = read(chunk, start + i as u64 * entry) {
                    if e > s && e - s <= MAX_INSN {
                        patched.push((s, e));
                    }
                }
            }
        }
        patched.sort_unstable();
        code.patched = patched;
        tracing::debug!(sites = code.patched.len(), "kernel code: boot-time patch sites");
        Ok(code)
    }

    /// The vmlinux.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` bytes of the file at link-time address `addr`, when a section
    /// with contents holds them all.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| addr >= s.address && addr - s.address < s.size)?;
        let end = addr.checked_add(len as u64)?;
        if end > s.address + s.size {
            return None;
        }
        let start = usize::try_from(s.offset + (addr - s.address)).ok()?;
        self.map.get(start..start + len)
    }

    /// Whether `[addr, addr + len)` overlaps a site the kernel may rewrite
    /// at boot.
    pub fn is_patched(&self, addr: u64, len: u64) -> bool {
        let end = addr + len;
        // Sites are at most MAX_INSN long: only those starting in
        // (addr - MAX_INSN, end) can overlap.
        let from = self.patched.partition_point(|&(s, _)| s + MAX_INSN <= addr);
        self.patched[from..].iter().take_while(|&&(s, _)| s < end).any(|&(s, e)| s < end && addr < e)
    }

    /// Number of boot-time patch sites found.
    pub fn patch_sites(&self) -> usize {
        self.patched.len()
    }
}
