//! A golden-run profile of the guest kernel: which kernel instructions ran
//! how often under a workload, and which instructions read or wrote which
//! addresses of `.data`/`.bss`, over one observation window.
//!
//! The counts come from kfi's TCG plugin (`profiler/`, its dump format is
//! parsed here). A basic block's count is how often QEMU entered it; each of
//! its instructions is counted that often (a block left early by an
//! exception counts its tail once too often, which is rare in kernel code
//! and does not change which instructions ran). Blocks that overlap (a jump
//! into the middle of another) add up per instruction.
//!
//! A profile is stored as `profile.json` (what it was measured on, and the
//! SHA-256 of the counts) beside `profile.counts.xz` (the dump, compressed);
//! its id is that hash, which the fault lists drawn from it name.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{KernelImage, SymbolKind};

/// The first line of a dump this parser reads.
pub const DUMP_HEADER: &str = "kfi-profile 1";
/// The metadata file in a profile directory.
pub const META_FILE: &str = "profile.json";
/// The compressed counts in a profile directory.
pub const COUNTS_FILE: &str = "profile.counts.xz";
/// The metadata format written by this build.
pub const FORMAT: u32 = 1;

/// Why a profile could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A dump line that is not one of the plugin's records.
    #[error("profile dump line {line}: {why} in `{text}`")]
    Parse {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: &'static str,
        /// The line.
        text: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata does not parse.
    #[error("{path}: {source}: remove the profile directory's files and make it again with `kfi profile`")]
    Meta {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The counts do not match the hash the metadata names.
    #[error("{path}: the counts' SHA-256 is {found}, the profile names {expected}: the file is damaged or was replaced; make the profile again with `kfi profile`")]
    Corrupt {
        /// The counts file.
        path: PathBuf,
        /// Named by the metadata.
        expected: String,
        /// Computed.
        found: String,
    },
    /// A profile of another kernel.
    #[error("the profile {id} was made on kernel build {profiled}, this kernel image is build {image}: make a profile of this kernel (`kfi profile`)")]
    OtherKernel {
        /// The profile's id.
        id: String,
        /// Its kernel's build id.
        profiled: String,
        /// The image's build id.
        image: String,
    },
}

/// A translation block and how often it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Address of its first instruction.
    pub address: u64,
    /// Executions in the window.
    pub executions: u64,
    /// Offsets of its instructions from `address`, in order.
    pub offsets: Vec<u32>,
}

/// Accesses by one instruction to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The accessing instruction.
    pub instruction: u64,
    /// The first byte accessed.
    pub address: u64,
    /// Bytes per access.
    pub size: u8,
    /// Loads.
    pub reads: u64,
    /// Stores.
    pub writes: u64,
}

/// The plugin's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Executed kernel blocks, by address.
    pub blocks: Vec<Block>,
    /// Accesses to the watched ranges.
    pub accesses: Vec<Access>,
}

fn field<'t, T>(
    parts: &mut impl Iterator<Item = &'t str>,
    radix: u32,
    line: usize,
    text: &str,
    what: &'static str,
) -> Result<T, ProfileError>
where
    T: TryFrom<u64>,
{
    let err = || ProfileError::Parse { line, why: what, text: text.to_string() };
    let raw = parts.next().ok_or_else(err)?;
    let n = u64::from_str_radix(raw, radix).map_err(|_| err())?;
    T::try_from(n).map_err(|_| err())
}

impl Counts {
    /// Parses the plugin's dump.
    pub fn parse(text: &str) -> Result<Counts, ProfileError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h == DUMP_HEADER => {}
            other => {
                return Err(ProfileError::Parse {
                    line: 1,
                    why: "expected the header `kfi-profile 1` (a dump of another plugin version?)",
                    text: other.map(|(_, l)| l.to_string()).unwrap_or_default(),
                })
            }
        }
        let mut counts = Counts::default();
        for (i, text) in lines {
            let line = i + 1;
            let mut parts = text.split(' ');
            match parts.next() {
                Some("B") => {
                    let address = field::<u64>(&mut parts, 16, line, text, "a block address in hex")?;
                    let executions = field::<u64>(&mut parts, 10, line, text, "an execution count")?;
                    let offsets = parts
                        .next()
                        .filter(|s| !s.is_empty())
                        .ok_or(ProfileError::Parse { line, why: "no instruction offsets", text: text.to_string() })?
                        .split(',')
                        .map(|o| u32::from_str_radix(o, 16))
                        .collect::<Result<Vec<u32>, _>>()
                        .map_err(|_| ProfileError::Parse {
                            line,
                            why: "an offset not in hex",
                            text: text.to_string(),
                        })?;
                    counts.blocks.push(Block { address, executions, offsets });
                }
                Some("M") => counts.accesses.push(Access {
                    instruction: field(&mut parts, 16, line, text, "an instruction address in hex")?,
                    address: field(&mut parts, 16, line, text, "an accessed address in hex")?,
                    size: field(&mut parts, 10, line, text, "an access size")?,
                    reads: field(&mut parts, 10, line, text, "a read count")?,
                    writes: field(&mut parts, 10, line, text, "a write count")?,
                }),
                _ => return Err(ProfileError::Parse { line, why: "not a B or M record", text: text.to_string() }),
            }
            if parts.next().is_some() {
                return Err(ProfileError::Parse { line, why: "trailing fields", text: text.to_string() });
            }
        }
        Ok(counts)
    }

    /// The dump format, as the plugin writes it.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("{DUMP_HEADER}\n");
        for b in &self.blocks {
            let offsets: Vec<String> = b.offsets.iter().map(|o| format!("{o:x}")).collect();
            let _ = writeln!(out, "B {:x} {} {}", b.address, b.executions, offsets.join(","));
        }
        for a in &self.accesses {
            let _ = writeln!(out, "M {:x} {:x} {} {} {}", a.instruction, a.address, a.size, a.reads, a.writes);
        }
        out
    }
}

/// What a profile was measured on; the harness fills in what the injector
/// does not know (image recipe, workload, QEMU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileMeta {
    /// Metadata format.
    pub format: u32,
    /// The profiled kernel's GNU build id (hex).
    pub kernel_build_id: String,
    /// Its package (`name=version`), or the user's kernel file.
    pub kernel: String,
    /// Guest profile (`tiny`, `debian`).
    pub guest: String,
    /// The guest image's recipe hash.
    pub image_recipe: String,
    /// The workload as the experiment file gives it.
    pub workload: serde_json::Value,
    /// Seconds of load the counts cover (counted from a reset once the
    /// guest served).
    pub window_s: f64,
    /// QEMU's version.
    pub qemu_version: String,
    /// The memory ranges whose accesses were kept, `[start, end)`.
    pub memory_ranges: Vec<(u64, u64)>,
    /// SHA-256 of the uncompressed counts: the profile's id.
    pub counts_sha256: String,
    /// The kfi commit that made it.
    pub kfi_commit: String,
    /// Wall-clock seconds the whole profiling run took.
    pub elapsed_s: f64,
    /// Correct answers the clients got in the window (under the plugin's
    /// cost: compare with the workload's throughput without it).
    #[serde(default)]
    pub answered: u64,
}

/// A profile: its metadata and counts, with per-instruction executions.
#[derive(Debug, Clone)]
pub struct Profile {
    /// What it was measured on.
    pub meta: ProfileMeta,
    /// The plugin's counts.
    pub counts: Counts,
    executed: BTreeMap<u64, u64>,
}

/// SHA-256 of counts as rendered.
pub fn counts_sha256(counts: &Counts) -> String {
    hex(&Sha256::digest(counts.render().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io { path: path.to_path_buf(), source }
}

impl Profile {
    /// A profile of `counts`; `meta.counts_sha256` is set from them.
    pub fn new(mut meta: ProfileMeta, counts: Counts) -> Profile {
        meta.counts_sha256 = counts_sha256(&counts);
        Profile::indexed(meta, counts)
    }

    /// A profile whose metadata already names its counts' hash.
    fn indexed(meta: ProfileMeta, counts: Counts) -> Profile {
        let mut executed: BTreeMap<u64, u64> = BTreeMap::new();
        for b in &counts.blocks {
            for o in &b.offsets {
                *executed.entry(b.address + u64::from(*o)).or_default() += b.executions;
            }
        }
        Profile { meta, counts, executed }
    }

    /// The profile's id: the first 16 hex digits of its counts' SHA-256.
    pub fn id(&self) -> &str {
        &self.meta.counts_sha256[..16.min(self.meta.counts_sha256.len())]
    }

    /// Executions of the instruction at `address` (0: never ran).
    pub fn executions(&self, address: u64) -> u64 {
        self.executed.get(&address).copied().unwrap_or(0)
    }

    /// Every executed instruction with its executions, by address.
    pub fn executed(&self) -> &BTreeMap<u64, u64> {
        &self.executed
    }

    /// Refuses a profile of another kernel than `image`.
    pub fn check_kernel(&self, image: &KernelImage) -> Result<(), ProfileError> {
        let build = hex(image.build_id());
        if build != self.meta.kernel_build_id {
            return Err(ProfileError::OtherKernel {
                id: self.id().to_string(),
                profiled: self.meta.kernel_build_id.clone(),
                image: build,
            });
        }
        Ok(())
    }

    /// Writes `profile.json` and `profile.counts.xz` into `dir` (each
    /// written whole, then renamed).
    pub fn save(&self, dir: &Path) -> Result<(), ProfileError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let counts = dir.join(COUNTS_FILE);
        let partial = dir.join(format!("{COUNTS_FILE}.partial"));
        let mut enc = liblzma::write::XzEncoder::new(std::fs::File::create(&partial).map_err(io(&partial))?, 6);
        enc.write_all(self.counts.render().as_bytes()).map_err(io(&partial))?;
        enc.finish().and_then(|f| f.sync_all()).map_err(io(&partial))?;
        std::fs::rename(&partial, &counts).map_err(io(&counts))?;
        let meta = dir.join(META_FILE);
        let partial = dir.join(format!("{META_FILE}.partial"));
        let json = serde_json::to_string_pretty(&self.meta).expect("metadata serializes");
        std::fs::write(&partial, json + "\n").map_err(io(&partial))?;
        std::fs::rename(&partial, &meta).map_err(io(&meta))
    }

    /// Whether `dir` holds a profile.
    pub fn exists(dir: &Path) -> bool {
        dir.join(META_FILE).is_file()
    }

    /// Reads a profile saved by [`save`](Self::save), checking the counts
    /// against the hash the metadata names.
    pub fn load(dir: &Path) -> Result<Profile, ProfileError> {
        let meta_path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
        let meta: ProfileMeta =
            serde_json::from_str(&text).map_err(|source| ProfileError::Meta { path: meta_path.clone(), source })?;
        let path = dir.join(COUNTS_FILE);
        let mut dump = String::new();
        liblzma::read::XzDecoder::new(std::fs::File::open(&path).map_err(io(&path))?)
            .read_to_string(&mut dump)
            .map_err(io(&path))?;
        let found = hex(&Sha256::digest(dump.as_bytes()));
        if found != meta.counts_sha256 {
            return Err(ProfileError::Corrupt { path, expected: meta.counts_sha256, found });
        }
        // The file is the counts as rendered, so its hash is theirs.
        Ok(Profile::indexed(meta, Counts::parse(&dump)?))
    }

    /// What ran, by function and subsystem, against what the image has.
    pub fn summary(&self, image: &KernelImage) -> Summary {
        let mut functions: BTreeMap<u64, FunctionUse> = BTreeMap::new();
        let mut outside = 0u64;
        for (&address, &n) in &self.executed {
            match image.symbol_at(address).filter(|s| s.kind == SymbolKind::Function) {
                Some(f) => {
                    let e = functions.entry(f.address).or_insert_with(|| FunctionUse {
                        name: f.name.to_string(),
                        subsystem: f.subsystem().unwrap_or("(unknown)").to_string(),
                        instructions: 0,
                        executions: 0,
                    });
                    e.instructions += 1;
                    e.executions += n;
                }
                // Modules, BPF, trampolines: no symbol in the vmlinux.
                None => outside += n,
            }
        }
        let mut subsystems: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for f in functions.values() {
            let s = subsystems.entry(f.subsystem.clone()).or_default();
            s.0 += 1;
            s.1 += f.executions;
        }
        let text_functions = image.functions().filter(|f| f.size > 0 && f.section.name == ".text").count();
        let mut functions: Vec<FunctionUse> = functions.into_values().collect();
        functions.sort_by(|a, b| b.executions.cmp(&a.executions).then(a.name.cmp(&b.name)));
        let mut subsystems: Vec<(String, usize, u64)> = subsystems.into_iter().map(|(k, (f, e))| (k, f, e)).collect();
        subsystems.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let reads = self.counts.accesses.iter().map(|a| a.reads).sum();
        let writes = self.counts.accesses.iter().map(|a| a.writes).sum();
        Summary {
            id: self.id().to_string(),
            executed_instructions: self.executed.len(),
            instruction_executions: self.executed.values().sum(),
            executed_functions: functions.len(),
            text_functions,
            outside_vmlinux: outside,
            functions,
            subsystems,
            data_reads: reads,
            data_writes: writes,
            data_addresses: self
                .counts
                .accesses
                .iter()
                .map(|a| a.address)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }
}

/// One function's share of a profile.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionUse {
    /// Name.
    pub name: String,
    /// Subsystem (`(unknown)` without a source file).
    pub subsystem: String,
    /// Its distinct instructions that ran.
    pub instructions: usize,
    /// Instruction executions in it.
    pub executions: u64,
}

/// A profile against its kernel image.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The profile's id.
    pub id: String,
    /// Distinct kernel instructions that ran.
    pub executed_instructions: usize,
    /// Kernel instruction executions.
    pub instruction_executions: u64,
    /// Functions with at least one executed instruction.
    pub executed_functions: usize,
    /// Functions in `.text`.
    pub text_functions: usize,
    /// Executions at addresses no vmlinux function covers (modules).
    pub outside_vmlinux: u64,
    /// Executed functions, most executions first.
    pub functions: Vec<FunctionUse>,
    /// (subsystem, executed functions, executions), most executions first.
    pub subsystems: Vec<(String, usize, u64)>,
    /// Loads from the watched ranges.
    pub data_reads: u64,
    /// Stores to them.
    pub data_writes: u64,
    /// Distinct addresses accessed there.
    pub data_addresses: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn counts() -> impl Strategy<Value = Counts> {
        let block = (any::<u64>(), any::<u64>(), prop::collection::vec(any::<u32>(), 1..6))
            .prop_map(|(address, executions, offsets)| Block { address, executions, offsets });
        let access = (any::<u64>(), any::<u64>(), any::<u8>(), any::<u64>(), any::<u64>()).prop_map(
            |(instruction, address, size, reads, writes)| Access { instruction, address, size, reads, writes },
        );
        (prop::collection::vec(block, 0..20), prop::collection::vec(access, 0..20))
            .prop_map(|(blocks, accesses)| Counts { blocks, accesses })
    }

    proptest! {
        #[test]
        fn a_dump_parses_back_to_its_counts(c in counts()) {
            prop_assert_eq!(Counts::parse(&c.render()).unwrap(), c);
        }

        #[test]
        fn parsing_never_panics(text in "kfi-profile 1\n[BM0-9a-f ,\n]{0,200}") {
            let _ = Counts::parse(&text);
        }
    }

    #[test]
    fn bad_dumps_name_the_line() {
        assert!(Counts::parse("kfi-profile 2\n").unwrap_err().to_string().contains("header"));
        let e = Counts::parse("kfi-profile 1\nB ffffffff81000000 12 0,4\nB zz 1 0\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("block address"), "{e}");
        let e = Counts::parse("kfi-profile 1\nM 1 2 4 5\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("write count"), "{e}");
        assert!(Counts::parse("kfi-profile 1\nX 1\n").unwrap_err().to_string().contains("not a B or M"));
    }

    #[test]
    fn overlapping_blocks_add_up_per_instruction_and_a_saved_profile_loads_back() {
        let counts = Counts {
            blocks: vec![
                Block { address: 0x1000, executions: 5, offsets: vec![0, 3, 7] },
                Block { address: 0x1007, executions: 2, offsets: vec![0, 2] },
            ],
            accesses: vec![Access { instruction: 0x1003, address: 0x5000, size: 8, reads: 5, writes: 0 }],
        };
        let meta = ProfileMeta {
            format: FORMAT,
            kernel_build_id: "ab".into(),
            kernel: "k".into(),
            guest: "tiny".into(),
            image_recipe: "r".into(),
            workload: serde_json::json!({"kind": "apache"}),
            window_s: 1.0,
            qemu_version: "7.2".into(),
            memory_ranges: vec![(0x5000, 0x6000)],
            counts_sha256: String::new(),
            kfi_commit: "c".into(),
            elapsed_s: 2.0,
            answered: 10,
        };
        let p = Profile::new(meta, counts);
        assert_eq!(p.executions(0x1007), 7, "both blocks ran it");
        assert_eq!(p.executions(0x1009), 2);
        assert_eq!(p.executions(0x1001), 0);
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path()).unwrap();
        let back = Profile::load(dir.path()).unwrap();
        assert_eq!(back.meta, p.meta);
        assert_eq!(back.executed(), p.executed());
        // Counts that are not the ones the metadata names are refused.
        let other = Profile::new(p.meta.clone(), Counts::default());
        let elsewhere = tempfile::tempdir().unwrap();
        other.save(elsewhere.path()).unwrap();
        std::fs::copy(elsewhere.path().join(COUNTS_FILE), dir.path().join(COUNTS_FILE)).unwrap();
        let e = Profile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged or was replaced"), "{e}");
        std::fs::write(dir.path().join(COUNTS_FILE), b"not xz").unwrap();
        assert!(Profile::load(dir.path()).is_err());
    }
}
