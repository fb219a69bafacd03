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
    /// `(address, index into files)` of the variables a unit defines at
    /// file scope (a `DW_TAG_variable` child of the unit root with a
    /// `DW_OP_addr` location), sorted by address.
    pub variables: Vec<(u64, u32)>,
}

impl UnitSources {
    /// The file of the unit that defines the variable at `addr`.
    pub fn variable_file(&self, addr: u64) -> Option<u32> {
        let i = self.variables.binary_search_by_key(&addr, |v| v.0).ok()?;
        Some(self.variables[i].1)
    }

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

    // Per unit: its path, the code ranges it covers, its variables.
    type RawUnit = (String, Vec<(u64, u64)>, Vec<u64>);
    let mut raw: Vec<RawUnit> = Vec::new();
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
        let variables = file_scope_variables(&unit).map_err(gimli("unit variables"))?;
        if !ranges.is_empty() || !variables.is_empty() {
            raw.push((normalize(&path), ranges, variables));
        }
    }

    // The tree's root is where init/main.c lives; generated files sit in the
    // build directory instead and fall back to the first top-level directory.
    let root = raw.iter().find_map(|(p, _, _)| p.strip_suffix("/init/main.c")).map(|r| format!("{r}/"));
    let mut files = Vec::new();
    let mut file_ids: HashMap<String, u32> = HashMap::new();
    let mut ranges = Vec::new();
    let mut variables = Vec::new();
    for (path, unit_ranges, unit_variables) in &raw {
        let rel = relative(path, root.as_deref());
        let id = *file_ids.entry(rel.clone()).or_insert_with(|| {
            files.push(rel);
            (files.len() - 1) as u32
        });
        ranges.extend(unit_ranges.iter().map(|&(s, e)| (s, e, id)));
        variables.extend(unit_variables.iter().map(|&a| (a, id)));
    }
    ranges.sort_unstable();
    // A variable defined in two units (a header's static copy) keeps the
    // first unit by address order of the pairs: deterministic either way.
    variables.sort_unstable();
    variables.dedup_by_key(|v| v.0);
    Ok(UnitSources { files, ranges, variables })
}

/// Addresses of the variables `unit` defines at file scope: children of
/// its root DIE tagged `DW_TAG_variable` whose location is one
/// `DW_OP_addr`. Only the root's children are read (the entries tree skips
/// each child's subtree), not the unit's whole DIE tree.
fn file_scope_variables<R: gimli::Reader>(unit: &gimli::Unit<R>) -> Result<Vec<u64>, gimli::Error> {
    let mut out = Vec::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_variable {
            continue;
        }
        let Some(gimli::AttributeValue::Exprloc(expr)) = entry.attr_value(gimli::DW_AT_location) else { continue };
        let mut ops = expr.operations(unit.encoding());
        if let Ok(Some(gimli::Operation::Address { address })) = ops.next() {
            if address != 0 {
                out.push(address);
            }
        }
    }
    Ok(out)
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
        let s = UnitSources {
            files: vec!["a".into(), "b".into()],
            ranges: vec![(10, 20, 0), (30, 40, 1)],
            variables: vec![(50, 1)],
        };
        assert_eq!(s.variable_file(50), Some(1));
        assert_eq!(s.variable_file(51), None);
        assert_eq!(
            [s.file_at(9), s.file_at(10), s.file_at(19), s.file_at(20), s.file_at(35)],
            [None, Some(0), Some(0), None, Some(1)]
        );
    }
}
