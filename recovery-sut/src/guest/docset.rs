//! The document set the guests' web servers serve: a deterministic file set
//! with a web-like size mix (many small pages, a few large files), and the
//! digest of each file so clients can check every answer.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One served file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    /// URL path, starting with `/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// The manifest of a generated document set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSet {
    /// Seed it was generated from.
    pub seed: u64,
    /// Every file, `/index.html` first.
    pub docs: Vec<Doc>,
}

impl DocSet {
    /// The page whose correct answer means "the service is up".
    pub fn index(&self) -> &Doc {
        &self.docs[0]
    }

    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.docs.iter().map(|d| d.size).sum()
    }
}

/// Size classes: (share in percent, smallest, largest) bytes. Roughly the
/// shape of SPECweb-style static mixes, scaled to fit a RAM-backed guest.
const SIZE_MIX: &[(u32, u64, u64)] =
    &[(60, 512, 4 << 10), (30, 4 << 10, 32 << 10), (9, 32 << 10, 256 << 10), (1, 256 << 10, 1 << 20)];

fn pick_size(rng: &mut ChaCha8Rng) -> u64 {
    let mut roll = rng.random_range(0..100u32);
    for &(share, lo, hi) in SIZE_MIX {
        if roll < share {
            return rng.random_range(lo..=hi);
        }
        roll -= share;
    }
    SIZE_MIX[0].1
}

fn text(rng: &mut ChaCha8Rng, size: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz      ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,";
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        if out.len() % 72 == 71 {
            out.push(b'\n');
        } else {
            out.push(ALPHABET[rng.random_range(0..ALPHABET.len())]);
        }
    }
    out
}

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Generates `count` files (plus `/index.html`) from a seed. Returns the
/// manifest and the files' contents, index first.
pub fn generate(seed: u64, count: usize) -> (DocSet, Vec<(String, Vec<u8>)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut files = Vec::with_capacity(count + 1);
    for i in 0..count {
        let size = pick_size(&mut rng);
        files.push((format!("/docs/f{i:04}.txt"), text(&mut rng, size)));
    }
    let mut index = String::from("<!doctype html>\n<html><head><title>kfi document set</title></head><body>\n");
    index.push_str(&format!("<p>kfi document set, seed {seed}, {count} files</p>\n<ul>\n"));
    for (path, data) in &files {
        index.push_str(&format!("<li><a href=\"{path}\">{path}</a> {} bytes</li>\n", data.len()));
    }
    index.push_str("</ul></body></html>\n");
    files.insert(0, ("/index.html".to_string(), index.into_bytes()));
    let docs = files
        .iter()
        .map(|(path, data)| Doc { path: path.clone(), size: data.len() as u64, sha256: digest(data) })
        .collect();
    (DocSet { seed, docs }, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_set_other_seed_other_set() {
        let (a, _) = generate(7, 50);
        let (b, _) = generate(7, 50);
        let (c, _) = generate(8, 50);
        assert_eq!(a, b);
        assert_ne!(a.docs, c.docs);
    }

    #[test]
    fn mix_is_mostly_small_with_a_few_large() {
        let (set, files) = generate(1, 1000);
        let small = set.docs.iter().filter(|d| d.size <= 4 << 10).count();
        let large = set.docs.iter().filter(|d| d.size > 256 << 10).count();
        assert!((500..700).contains(&small), "small files: {small}");
        assert!((1..40).contains(&large), "large files: {large}");
        assert_eq!(set.index().path, "/index.html");
        for (doc, (_, data)) in set.docs.iter().zip(&files) {
            assert_eq!(doc.sha256, digest(data));
        }
    }
}
