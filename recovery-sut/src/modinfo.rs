//! Kernel module metadata (`.modinfo`) and the load order of a module set.
//!
//! The Debian kernel package ships no `modules.dep` (depmod runs at install
//! time), so the guest's `insmod` order is computed here from each module's
//! own `depends=` string.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Errors while reading modules or ordering them.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A module file cannot be read.
    #[error("cannot read kernel module {path}: {source}")]
    Read {
        /// The .ko file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A module file is not a parsable ELF object.
    #[error("kernel module {path} is not a valid ELF object: {detail}")]
    Elf {
        /// The .ko file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A needed module is not in the module tree.
    #[error("kernel module `{name}` (needed by {needed_by}) is not under {tree}; pass a --modules directory of the same kernel that has it, or a kernel with it built in")]
    Missing {
        /// Module name.
        name: String,
        /// Who needs it.
        needed_by: String,
        /// Where it was looked for.
        tree: PathBuf,
    },
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let text = String::from_utf8_lossy(s);
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The module names in a `depends=` value.
pub fn parse_depends(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(canonical_name).collect()
}

/// Module names treat `-` and `_` alike; this is the `_` form.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the `depends=` list of one `.ko` file.
pub fn module_depends(path: &Path) -> Result<Vec<String>, ModuleError> {
    let bytes = std::fs::read(path).map_err(|source| ModuleError::Read { path: path.into(), source })?;
    let elf =
        goblin::elf::Elf::parse(&bytes).map_err(|e| ModuleError::Elf { path: path.into(), detail: e.to_string() })?;
    for sh in &elf.section_headers {
        if elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo") {
            let range = sh
                .file_range()
                .ok_or_else(|| ModuleError::Elf { path: path.into(), detail: ".modinfo has no file data".into() })?;
            let data = bytes.get(range).ok_or_else(|| ModuleError::Elf {
                path: path.into(),
                detail: ".modinfo lies outside the file".into(),
            })?;
            return Ok(parse_modinfo(data)
                .into_iter()
                .filter(|(k, _)| k == "depends")
                .flat_map(|(_, v)| parse_depends(&v))
                .collect());
        }
    }
    Ok(Vec::new())
}

/// Indexes every `*.ko` under a module tree by canonical name.
pub fn index_tree(tree: &Path) -> BTreeMap<String, PathBuf> {
    let mut index = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(canonical_name(stem), path);
            }
        }
    }
    index
}

/// Orders `wanted` and everything they depend on so that each module comes
/// after its dependencies. `depends_of` gives a module's direct dependencies.
/// Ties are broken by name, so the order is stable.
pub fn load_order<F, E>(wanted: &[String], mut depends_of: F) -> Result<Vec<String>, E>
where
    F: FnMut(&str, &str) -> Result<Vec<String>, E>,
{
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();
    let mut roots: Vec<String> = wanted.iter().map(|w| canonical_name(w)).collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        visit(&root, "the guest profile", &mut depends_of, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit<F, E>(
    name: &str,
    needed_by: &str,
    depends_of: &mut F,
    done: &mut BTreeSet<String>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<(), E>
where
    F: FnMut(&str, &str) -> Result<Vec<String>, E>,
{
    // A dependency cycle cannot load in any order; the kernel would refuse it
    // too, so breaking it here only avoids infinite recursion.
    if done.contains(name) || !visiting.insert(name.to_string()) {
        return Ok(());
    }
    let mut deps = depends_of(name, needed_by)?;
    deps.sort();
    for dep in deps {
        visit(&dep, name, depends_of, done, visiting, order)?;
    }
    visiting.remove(name);
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

/// Resolves the load order of `wanted` in a real module tree.
pub fn resolve_in_tree(tree: &Path, wanted: &[String]) -> Result<Vec<(String, PathBuf)>, ModuleError> {
    let index = index_tree(tree);
    let order = load_order(wanted, |name, needed_by| {
        let path = index.get(name).ok_or_else(|| ModuleError::Missing {
            name: name.to_string(),
            needed_by: needed_by.to_string(),
            tree: tree.to_path_buf(),
        })?;
        module_depends(path)
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let path = index[&name].clone();
            (name, path)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_modinfo_strings() {
        let blob = b"license=GPL\0depends=virtio,virtio_ring\0\0intree=Y\0vermagic=6.1.0 SMP\0";
        let kv = parse_modinfo(blob);
        assert_eq!(kv[1], ("depends".to_string(), "virtio,virtio_ring".to_string()));
        assert_eq!(parse_depends(&kv[1].1), vec!["virtio", "virtio_ring"]);
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn dependencies_come_first() {
        let graph: BTreeMap<&str, Vec<&str>> = [
            ("ext4", vec!["jbd2", "mbcache", "crc16"]),
            ("jbd2", vec![]),
            ("mbcache", vec![]),
            ("crc16", vec![]),
            ("virtio_net", vec!["net_failover", "virtio", "virtio_ring"]),
            ("net_failover", vec!["failover"]),
            ("failover", vec![]),
            ("virtio", vec![]),
            ("virtio_ring", vec![]),
        ]
        .into_iter()
        .collect();
        let order = load_order::<_, ()>(&["virtio_net".into(), "ext4".into()], |n, _| {
            Ok(graph[n].iter().map(|s| s.to_string()).collect())
        })
        .unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("jbd2") < pos("ext4"));
        assert_eq!(order.len(), graph.len());
    }

    #[test]
    fn missing_module_is_named_with_its_dependent() {
        let err = load_order(&["a".into()], |n, by| {
            if n == "a" {
                Ok(vec!["b".to_string()])
            } else {
                Err(format!("{n} needed by {by}"))
            }
        })
        .unwrap_err();
        assert_eq!(err, "b needed by a");
    }

    proptest! {
        #[test]
        fn modinfo_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_modinfo(&bytes);
        }

        #[test]
        fn order_respects_every_edge(edges in proptest::collection::vec((0u8..12, 0u8..12), 0..40)) {
            // Only edges from a higher to a lower number: a DAG by construction.
            let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (a, b) in &edges {
                if a > b {
                    graph.entry(format!("m{a}")).or_default().push(format!("m{b}"));
                }
            }
            let wanted: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
            let order = load_order::<_, ()>(&wanted, |n, _| Ok(graph.get(n).cloned().unwrap_or_default())).unwrap();
            prop_assert_eq!(order.len(), 12);
            for (from, tos) in &graph {
                let pf = order.iter().position(|x| x == from).unwrap();
                for to in tos {
                    let pt = order.iter().position(|x| x == to).unwrap();
                    prop_assert!(pt < pf, "{} must load before {}", to, from);
                }
            }
        }
    }
}
