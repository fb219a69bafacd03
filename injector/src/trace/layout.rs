//! Where the kernel keeps what identifies the running context: the per-CPU
//! offsets of `current_task` and `__preempt_count` (symbols), and the
//! `task_struct` fields for pid, tgid, comm, flags, mm and the kernel stack
//! (DWARF). Read once from the debug vmlinux and cached next to it as
//! `<vmlinux>.kfi-layout.json`, keyed by the vmlinux's size and mtime.

use std::path::{Path, PathBuf};

use gimli::{AttributeValue, EndianSlice, LittleEndian, SectionId};
use serde::{Deserialize, Serialize};

use crate::image::{elf, KernelImage};

/// Why the layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The vmlinux could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ELF could not be parsed.
    #[error("{path} is not a readable ELF: {detail}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// DWARF could not be read.
    #[error("reading the DWARF of {path}: {source}")]
    Dwarf {
        /// The file.
        path: PathBuf,
        /// Why.
        source: gimli::Error,
    },
    /// Something the tracer needs is missing.
    #[error("{what} not found in {path}: propagation tracing needs the debug vmlinux of the guest kernel (`kfi kernel --debug`)")]
    Missing {
        /// What.
        what: String,
        /// The file.
        path: PathBuf,
    },
}

/// Byte offsets of the `task_struct` fields the tracer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOffsets {
    /// `sizeof(struct task_struct)`.
    pub size: u64,
    /// `pid` (i32).
    pub pid: u64,
    /// `tgid` (i32).
    pub tgid: u64,
    /// `comm` (char[16]).
    pub comm: u64,
    /// `flags` (u32; `PF_KTHREAD` marks kernel threads).
    pub flags: u64,
    /// `mm` (pointer; NULL for kernel threads).
    pub mm: u64,
    /// `stack` (pointer to the bottom of the kernel stack).
    pub stack: u64,
}

/// Everything the tracer needs to know about the kernel's data layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLayout {
    /// Per-CPU offset of `current_task`.
    pub current_task: u64,
    /// Per-CPU offset of `__preempt_count`.
    pub preempt_count: u64,
    /// `task_struct` fields.
    pub task: TaskOffsets,
    /// Kernel stack size (`THREAD_SIZE`).
    pub thread_size: u64,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: i128,
    layout: KernelLayout,
}

impl KernelLayout {
    /// The layout of `vmlinux`, from its cache file when fresh.
    pub fn load(vmlinux: &Path, image: &KernelImage) -> Result<KernelLayout, LayoutError> {
        let io = |source| LayoutError::Io { path: vmlinux.to_path_buf(), source };
        let meta = std::fs::metadata(vmlinux).map_err(io)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        let cache = cache_path(vmlinux);
        if let Ok(text) = std::fs::read_to_string(&cache) {
            if let Ok(c) = serde_json::from_str::<Cached>(&text) {
                if c.size == meta.len() && c.mtime_ns == mtime_ns {
                    return Ok(c.layout);
                }
            }
        }
        let layout = KernelLayout::parse(vmlinux, image)?;
        let cached = Cached { size: meta.len(), mtime_ns, layout };
        // A read-only cache only costs the seconds of the next parse.
        if let Ok(text) = serde_json::to_string_pretty(&cached) {
            let tmp = cache.with_extension("json.tmp");
            if std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &cache)).is_err() {
                tracing::warn!(path = %cache.display(), "cannot save the kernel layout cache");
            }
        }
        Ok(layout)
    }

    /// Reads the layout from the vmlinux (symbols from `image`, struct
    /// offsets from DWARF), without any cache.
    pub fn parse(vmlinux: &Path, image: &KernelImage) -> Result<KernelLayout, LayoutError> {
        let missing = |what: &str| LayoutError::Missing { what: what.to_string(), path: vmlinux.to_path_buf() };
        let percpu =
            |name: &str| image.symbol(name).map(|s| s.address).ok_or_else(|| missing(&format!("symbol `{name}`")));
        let current_task = percpu("current_task")?;
        let preempt_count = percpu("__preempt_count")?;
        let file =
            std::fs::File::open(vmlinux).map_err(|source| LayoutError::Io { path: vmlinux.to_path_buf(), source })?;
        // SAFETY: read-only map of a cache file that is replaced by rename,
        // never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|source| LayoutError::Io { path: vmlinux.to_path_buf(), source })?;
        let contents =
            elf::read(&map).map_err(|e| LayoutError::Elf { path: vmlinux.to_path_buf(), detail: e.to_string() })?;
        let fields = struct_members(&map, &contents.debug_sections, "task_struct")
            .map_err(|source| LayoutError::Dwarf { path: vmlinux.to_path_buf(), source })?
            .ok_or_else(|| missing("`struct task_struct` in DWARF"))?;
        let field = |name: &str| {
            fields
                .members
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, o)| *o)
                .ok_or_else(|| missing(&format!("task_struct.{name}")))
        };
        let task = TaskOffsets {
            size: fields.size,
            pid: field("pid")?,
            tgid: field("tgid")?,
            comm: field("comm")?,
            flags: field("flags")?,
            mm: field("mm")?,
            stack: field("stack")?,
        };
        Ok(KernelLayout { current_task, preempt_count, task, thread_size: 16 * 1024 })
    }
}

fn cache_path(vmlinux: &Path) -> PathBuf {
    let mut name = vmlinux.file_name().unwrap_or_default().to_os_string();
    name.push(".kfi-layout.json");
    vmlinux.with_file_name(name)
}

/// A structure's size and its members' offsets (anonymous inner structs
/// and unions flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// `sizeof`.
    pub size: u64,
    /// (name, byte offset).
    pub members: Vec<(String, u64)>,
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// Finds the first complete definition of `struct name` in the DWARF and
/// returns its layout. Units are walked in order and the walk stops at the
/// first definition, which for a core type like `task_struct` is in one of
/// the first units.
pub fn struct_members(
    bytes: &[u8],
    sections: &[(&str, u64, u64)],
    name: &str,
) -> Result<Option<StructLayout>, gimli::Error> {
    let load = |id: SectionId| -> Result<Reader<'_>, gimli::Error> {
        let data = sections
            .iter()
            .find(|(n, _, _)| *n == id.name())
            .and_then(|&(_, o, s)| bytes.get(usize::try_from(o).ok()?..usize::try_from(o + s).ok()?))
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, LittleEndian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        while let Some(entry) = entries.next_dfs()? {
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            if entry.attr_value(gimli::DW_AT_declaration).is_some() {
                continue;
            }
            let Some(n) = entry.attr_value(gimli::DW_AT_name) else { continue };
            if dwarf.attr_string(&unit, n)?.slice() != name.as_bytes() {
                continue;
            }
            let Some(size) = entry.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value()) else {
                continue;
            };
            let mut members = Vec::new();
            collect_members(&dwarf, &unit, entry.offset(), 0, &mut members, 0)?;
            return Ok(Some(StructLayout { size, members }));
        }
    }
    Ok(None)
}

fn collect_members(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    at: gimli::UnitOffset,
    base: u64,
    out: &mut Vec<(String, u64)>,
    depth: u32,
) -> Result<(), gimli::Error> {
    if depth > 4 {
        return Ok(());
    }
    let mut tree = unit.entries_tree(Some(at))?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        if e.tag() != gimli::DW_TAG_member {
            continue;
        }
        let offset = base
            + match e.attr_value(gimli::DW_AT_data_member_location) {
                Some(v) => v.udata_value().unwrap_or(0),
                None => 0,
            };
        match e.attr_value(gimli::DW_AT_name) {
            Some(n) => out.push((String::from_utf8_lossy(dwarf.attr_string(unit, n)?.slice()).into_owned(), offset)),
            None => {
                // An anonymous struct or union: its members are the outer
                // struct's, at its offset.
                if let Some(AttributeValue::UnitRef(ty)) = e.attr_value(gimli::DW_AT_type) {
                    collect_members(dwarf, unit, ty, offset, out, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}
