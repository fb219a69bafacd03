//! The document set the guests' web servers serve: a deterministic file set
//! with a web-like size mix (many small pages, a few large files), and the
//! digest of each file so clients can check every answer.
//!
//! Randomness is ChaCha8 read only through `next_u64`, mapped to ranges by
//! [`below`] here: its output is fixed by the ChaCha algorithm, while the
//! sampling code behind `rand::Rng` (`random_range` and friends) may change
//! in any `rand` release. So a seed names the same document set across
//! `rand` upgrades, as the fault generator's seeds do
//! (`injector::fault::generate`). Changing how files are drawn changes
//! every image: bump `RECIPE_VERSION` in `guest/mod.rs`.

use rand_chacha::rand_core::{RngCore, SeedableRng};
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

/// An integer in `[0, n)` from one 64-bit draw: the high word of the
/// 128-bit product (multiply-shift, as the fault generator does; a bias
/// below 2^-40 for the ranges here, and no rejection loop).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n.max(1))) >> 64) as u64
}

fn pick_size(rng: &mut ChaCha8Rng) -> u64 {
    let mut roll = below(rng, 100) as u32;
    for &(share, lo, hi) in SIZE_MIX {
        if roll < share {
            return lo + below(rng, hi - lo + 1);
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
            out.push(ALPHABET[below(rng, ALPHABET.len() as u64) as usize]);
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

    /// The first draws of seed 1, computed once from this code: a change
    /// here means every seed now names another document set (bump
    /// `RECIPE_VERSION` if that is meant).
    #[test]
    fn the_draws_of_a_seed_are_pinned() {
        let (set, files) = generate(1, 3);
        let sizes: Vec<u64> = set.docs[1..].iter().map(|d| d.size).collect();
        assert_eq!(sizes, GOLDEN_SIZES);
        assert_eq!(&files[1].1[..16], GOLDEN_PREFIX);
        assert_eq!(below(&mut ChaCha8Rng::seed_from_u64(1), 1_000_000), GOLDEN_BELOW);
    }

    const GOLDEN_SIZES: [u64; 3] = [800, 3032, 4051];
    const GOLDEN_PREFIX: &[u8] = b"JptRAk3RBIgs t,5";
    const GOLDEN_BELOW: u64 = 402_485;

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
