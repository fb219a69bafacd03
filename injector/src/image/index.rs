//! The on-disk symbol index: a little-endian binary file holding exactly
//! what [`KernelImage`] keeps, so loading is one read plus a linear decode
//! of fixed-size records, with no parsing of names.
//!
//! Layout: magic `KFIIDX` + format version; key (vmlinux size, mtime,
//! whether sources were read); build-id; sections; source files; the
//! symbol-name string; 32-byte symbol records sorted by address; the
//! by-name permutation; end magic. Every offset is checked on decode, so a
//! damaged file is an error (and [`KernelImage::load`] rebuilds), never a
//! panic.

use std::fs::Metadata;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Entry, KernelImage, Section, SymbolKind};

const MAGIC: &[u8; 8] = b"KFIIDX\0\x01";
const END: &[u8; 8] = b"KFIEND\0\x01";
/// Bumped whenever the layout or what goes into it changes (2: variables
/// carry the source file of the unit that defines them).
const VERSION: u32 = 2;
const RECORD: usize = 32;

/// Why an index file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Not an index file.
    #[error("not a kfi symbol index (bad magic)")]
    BadMagic,
    /// Written by another format version.
    #[error("format version {found}, this build reads {VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The file ends early.
    #[error("truncated while reading {what}")]
    Truncated {
        /// The field.
        what: &'static str,
    },
    /// A field holds an impossible value.
    #[error("invalid {what}")]
    Invalid {
        /// The field.
        what: &'static str,
    },
}

/// What an index was built from: a vmlinux is identified by size and
/// modification time (hashing 630 MB would cost what the index saves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexKey {
    /// File size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch (negative before it).
    pub mtime_ns: i128,
    /// Whether DWARF source files were asked for.
    pub sources: bool,
}

impl IndexKey {
    /// The key of a vmlinux as it is now.
    pub fn of(meta: &Metadata, sources: bool) -> IndexKey {
        use std::os::unix::fs::MetadataExt;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        IndexKey { size: meta.len(), mtime_ns, sources }
    }

    /// Whether an index with this (stored) key can serve a load asking for `wanted`.
    pub fn satisfies(&self, wanted: &IndexKey) -> bool {
        self.size == wanted.size && self.mtime_ns == wanted.mtime_ns && (self.sources || !wanted.sources)
    }
}

/// `<vmlinux>.kfi-index`.
pub fn default_path(vmlinux: &Path) -> PathBuf {
    let mut name = vmlinux.file_name().unwrap_or_default().to_os_string();
    name.push(".kfi-index");
    vmlinux.with_file_name(name)
}

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written index and concurrent builders do not corrupt each other.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

/// Serialises an image with its key.
pub fn encode(image: &KernelImage, key: &IndexKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.names.len() + image.entries.len() * (RECORD + 4) + 4096);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_u64(&mut out, key.size);
    out.extend_from_slice(&key.mtime_ns.to_le_bytes());
    out.push(u8::from(key.sources));
    put_bytes(&mut out, &image.build_id);
    put_u32(&mut out, image.sections.len() as u32);
    for s in &image.sections {
        put_bytes(&mut out, s.name.as_bytes());
        put_u64(&mut out, s.address);
        put_u64(&mut out, s.size);
        out.push(u8::from(s.writable) | u8::from(s.executable) << 1);
    }
    put_u32(&mut out, image.files.len() as u32);
    for f in &image.files {
        put_bytes(&mut out, f.as_bytes());
    }
    put_bytes(&mut out, image.names.as_bytes());
    put_u32(&mut out, image.entries.len() as u32);
    for e in &image.entries {
        put_u64(&mut out, e.address);
        put_u64(&mut out, e.size);
        put_u32(&mut out, e.name_off);
        put_u32(&mut out, e.name_len);
        put_u32(&mut out, e.file);
        out.extend_from_slice(&e.section.to_le_bytes());
        out.push(e.kind.code());
        out.push(0);
    }
    for &i in &image.by_name {
        put_u32(&mut out, i);
    }
    out.extend_from_slice(END);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IndexError> {
        let end = self.pos.checked_add(n).ok_or(IndexError::Truncated { what })?;
        let out = self.bytes.get(self.pos..end).ok_or(IndexError::Truncated { what })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], IndexError> {
        let mut buf = [0u8; N];
        buf.copy_from_slice(self.take(N, what)?);
        Ok(buf)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, IndexError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, IndexError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, IndexError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], IndexError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, IndexError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| IndexError::Invalid { what })
    }

    /// A count of items of at least `min_size` bytes each, checked against
    /// the bytes left so a damaged count cannot ask for a huge allocation.
    fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize, IndexError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.bytes.len() - self.pos {
            return Err(IndexError::Truncated { what });
        }
        Ok(n)
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes an index file.
pub fn decode(bytes: &[u8]) -> Result<(IndexKey, KernelImage), IndexError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len(), "magic").map_err(|_| IndexError::BadMagic)? != MAGIC {
        return Err(IndexError::BadMagic);
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(IndexError::Version { found: version });
    }
    let size = r.u64("key")?;
    let mtime_ns = i128::from_le_bytes(r.array("key")?);
    let sources = r.u8("key")? != 0;
    let build_id = r.bytes("build-id")?.to_vec();
    let n = r.count(21, "section count")?;
    let mut sections = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("section name")?;
        let address = r.u64("section address")?;
        let size = r.u64("section size")?;
        let flags = r.u8("section flags")?;
        sections.push(Section { name, address, size, writable: flags & 1 != 0, executable: flags & 2 != 0 });
    }
    let n = r.count(4, "file count")?;
    let files = (0..n).map(|_| r.string("file name")).collect::<Result<Vec<_>, _>>()?;
    let names = r.string("symbol names")?;
    let n = r.count(RECORD + 4, "symbol count")?;
    let records = r.take(n * RECORD, "symbols")?;
    let mut entries = Vec::with_capacity(n);
    for rec in records.chunks_exact(RECORD) {
        let e = Entry {
            address: le64(&rec[0..]),
            size: le64(&rec[8..]),
            name_off: le32(&rec[16..]),
            name_len: le32(&rec[20..]),
            file: le32(&rec[24..]),
            section: u16::from_le_bytes([rec[28], rec[29]]),
            kind: SymbolKind::from_code(rec[30]).ok_or(IndexError::Invalid { what: "symbol kind" })?,
        };
        let name_end = e.name_off as usize + e.name_len as usize;
        if !names.is_char_boundary(e.name_off as usize) || name_end > names.len() || !names.is_char_boundary(name_end) {
            return Err(IndexError::Invalid { what: "symbol name offset" });
        }
        if usize::from(e.section) >= sections.len() || (e.file != super::NO_FILE && e.file as usize >= files.len()) {
            return Err(IndexError::Invalid { what: "symbol section or file" });
        }
        entries.push(e);
    }
    if entries.windows(2).any(|w| w[0].address > w[1].address) {
        return Err(IndexError::Invalid { what: "symbol order" });
    }
    let perm = r.take(n * 4, "name order")?;
    let by_name: Vec<u32> = perm.chunks_exact(4).map(le32).collect();
    if by_name.iter().any(|&i| i as usize >= n) {
        return Err(IndexError::Invalid { what: "name order" });
    }
    if r.take(END.len(), "end marker")? != END || r.pos != bytes.len() {
        return Err(IndexError::Invalid { what: "end marker" });
    }
    let image = KernelImage { build_id, sections, files, names, entries, by_name };
    Ok((IndexKey { size, mtime_ns, sources }, image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::sample;
    use proptest::prelude::*;

    const KEY: IndexKey = IndexKey { size: 633_378_432, mtime_ns: 1_794_824_260_000_000_000, sources: true };

    #[test]
    fn round_trips() {
        let image = sample();
        let (key, back) = decode(&encode(&image, &KEY)).unwrap();
        assert_eq!(key, KEY);
        assert_eq!(back, image);
        assert_eq!(back.symbolize(0x1130).as_deref(), Some("do_work+0x30"));
    }

    #[test]
    fn keys_decide_freshness() {
        let no_sources = IndexKey { sources: false, ..KEY };
        assert!(KEY.satisfies(&no_sources));
        assert!(!no_sources.satisfies(&KEY));
        assert!(!KEY.satisfies(&IndexKey { size: 1, ..KEY }));
        assert!(!KEY.satisfies(&IndexKey { mtime_ns: 0, ..KEY }));
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = encode(&sample(), &KEY);
        assert_eq!(decode(b"ELF").unwrap_err(), IndexError::BadMagic);
        // An index of another format version (here the next one).
        let mut other = bytes.clone();
        other[8] = (VERSION + 1) as u8;
        assert_eq!(decode(&other).unwrap_err(), IndexError::Version { found: VERSION + 1 });
        for cut in [9, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn default_path_sits_next_to_the_vmlinux() {
        assert_eq!(default_path(Path::new("/c/k/vmlinux")), Path::new("/c/k/vmlinux.kfi-index"));
    }

    proptest! {
        #[test]
        fn flipped_bytes_never_panic(at in 0usize..2000, value in any::<u8>()) {
            let mut bytes = encode(&sample(), &KEY);
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = decode(&bytes);
        }
    }
}
