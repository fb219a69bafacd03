//! The source file behind each address, from DWARF compilation units: every
//! unit names its `.c`/`.S` file and the address ranges its code occupies.
//! Attributing a function to its unit's file (rather than to the
//! `DW_AT_decl_file` of its subprogram) puts a `static inline` helper from
//! `include/` under the subsystem whose code it was compiled into, which is
//! what subsystem-targeted faults want. Only unit headers and root DIEs are
//! read, so this costs seconds, not the minutes a full DIE walk would.

use std::collections::HashMap;

use gimli::{EndianSlice, LittleEndian, SectionId};

/// Why the DWARF could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    /// gimli rejected the data.
    #[error("{what}: {source}")]
    Gimli {
        /// What was being read.
        what: &'static str,
        /// Why.
        source: gimli::Error,
    },
    /// A section lies outside the file.
    #[error("section {name} (offset {offset:#x}, {size} bytes) lies outside the file")]
    OutOfFile {
        /// Section name.
        name: String,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// The file has no `.debug_info`.
    #[error("no .debug_info section: the file carries no DWARF")]
    NoDebugInfo,
}

/// Top-level directories of a kernel source tree: a unit's path is made
/// relative to the tree by finding the first of these in it.
const TOP_DIRS: &[&str] = &[
    "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel", "lib", "mm",
    "net", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
];

/// Source files and the address ranges compiled from each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitSources {
    /// Source paths relative to the kernel tree (`kernel/fork.c`).
    pub files: Vec<String>,
    /// `(start, end, index into files)`, sorted by start.
    pub ranges: Vec<(u64, u64, u32)>,
}

impl UnitSources {
    /// The file whose unit covers `addr`.
    pub fn file_at(&self, addr: u64) -> Option<u32> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        let &(start, end, file) = self.ranges.get(i.checked_sub(1)?)?;
        (start <= addr && addr < end).then_some(file)
    }
}

/// Reads every compilation unit's name and ranges. `sections` are the
/// `.debug_*` sections as (name, file offset, size).
pub fn unit_sources(bytes: &[u8], sections: &[(&str, u64, u64)]) -> Result<UnitSources, DwarfError> {
    if !sections.iter().any(|(name, _, _)| *name == ".debug_info") {
        return Err(DwarfError::NoDebugInfo);
    }
    let load = |id: SectionId| -> Result<EndianSlice<'_, LittleEndian>, DwarfError> {
        let data = match sections.iter().find(|(name, _, _)| *name == id.name()) {
            Some(&(name, offset, size)) => usize::try_from(offset)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, s)| bytes.get(o..o.checked_add(s)?))
                .ok_or_else(|| DwarfError::OutOfFile { name: name.to_string(), offset, size })?,
            None => &[],
        };
        Ok(EndianSlice::new(data, LittleEndian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    let gimli = |what| move |source| DwarfError::Gimli { what, source };

    let mut raw: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
    let mut headers = dwarf.units();
    while let Some(header) = headers.next().map_err(gimli("unit header"))? {
        let unit = dwarf.unit(header).map_err(gimli("unit"))?;
        let Some(name) = unit.name else { continue };
        let name = String::from_utf8_lossy(name.slice()).into_owned();
        let comp_dir = unit.comp_dir.map(|d| String::from_utf8_lossy(d.slice()).into_owned());
        let path = if name.starts_with('/') { name } else { format!("{}/{name}", comp_dir.as_deref().unwrap_or("")) };
        let mut ranges = Vec::new();
        let mut iter = dwarf.unit_ranges(&unit).map_err(gimli("unit ranges"))?;
        while let Some(r) = iter.next().map_err(gimli("unit range"))? {
            if r.begin < r.end {
                ranges.push((r.begin, r.end));
            }
        }
        if !ranges.is_empty() {
            raw.push((normalize(&path), ranges));
        }
    }

    // The tree's root is where init/main.c lives; generated files sit in the
    // build directory instead and fall back to the first top-level directory.
    let root = raw.iter().find_map(|(p, _)| p.strip_suffix("/init/main.c")).map(|r| format!("{r}/"));
    let mut files = Vec::new();
    let mut file_ids: HashMap<String, u32> = HashMap::new();
    let mut ranges = Vec::new();
    for (path, unit_ranges) in &raw {
        let rel = relative(path, root.as_deref());
        let id = *file_ids.entry(rel.clone()).or_insert_with(|| {
            files.push(rel);
            (files.len() - 1) as u32
        });
        ranges.extend(unit_ranges.iter().map(|&(s, e)| (s, e, id)));
    }
    ranges.sort_unstable();
    Ok(UnitSources { files, ranges })
}

/// Removes `.` and `..` components.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The path relative to the kernel tree: strip the tree's root, then (for
/// files generated in a build directory inside or outside the tree) start
/// at the first top-level kernel directory.
fn relative(path: &str, root: Option<&str>) -> String {
    let rel = root.and_then(|r| path.strip_prefix(r)).unwrap_or(path);
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    match parts.iter().position(|p| TOP_DIRS.contains(p)) {
        Some(i) => parts[i..].join("/"),
        None => rel.to_string(),
    }
}

/// The subsystem of a tree-relative source path: its top-level directory.
pub fn subsystem(path: &str) -> Option<&str> {
    let (top, _) = path.split_once('/')?;
    TOP_DIRS.contains(&top).then_some(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_tree_relative() {
        let root = "/build/reproducible-path/linux-6.1.192/";
        assert_eq!(relative("/build/reproducible-path/linux-6.1.192/kernel/fork.c", Some(root)), "kernel/fork.c");
        // Generated in the build directory: the first top-level directory wins.
        let generated = normalize(
            "/build/reproducible-path/linux-6.1.192/debian/build/build_amd64/./drivers/tty/vt/../vt/defkeymap.c",
        );
        assert_eq!(relative(&generated, Some(root)), "drivers/tty/vt/defkeymap.c");
        assert_eq!(relative("/elsewhere/x.c", Some(root)), "/elsewhere/x.c");
        assert_eq!(subsystem("arch/x86/kernel/head_64.S"), Some("arch"));
        assert_eq!(subsystem("/elsewhere/x.c"), None);
    }

    #[test]
    fn ranges_map_addresses_to_files() {
        let s = UnitSources { files: vec!["a".into(), "b".into()], ranges: vec![(10, 20, 0), (30, 40, 1)] };
        assert_eq!(
            [s.file_at(9), s.file_at(10), s.file_at(19), s.file_at(20), s.file_at(35)],
            [None, Some(0), Some(0), None, Some(1)]
        );
    }
}
