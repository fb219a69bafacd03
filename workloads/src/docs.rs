//! The documents a static web workload asks for, and which one to ask for
//! next.
//!
//! The guest images write their document set as `docs.json`:
//! `{"seed": 1, "docs": [{"path": "/index.html", "size": 1234, "sha256": "<hex>"}, ...]}`.
//! This module reads that file on its own terms (it does not depend on the
//! crate that writes it), checks it once, and picks documents reproducibly.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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

impl Doc {
    /// The content digest as bytes, or `None` when `sha256` is not 64 hex
    /// digits.
    pub fn digest(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out).ok()?;
        Some(out)
    }
}

/// A document set as the guest image describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocList {
    /// Seed the set was generated from.
    pub seed: u64,
    /// Every file; the images put `/index.html` first.
    pub docs: Vec<Doc>,
}

/// What is wrong with a document list's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocListProblem {
    /// No documents at all: there is nothing to request.
    #[error("it lists no documents")]
    Empty,
    /// A path that cannot be an HTTP request target.
    #[error("document {index} has path {path:?}, which does not start with '/' or holds whitespace or controls")]
    BadPath {
        /// Position in `docs`.
        index: usize,
        /// The offending path.
        path: String,
    },
    /// A digest that is not 64 hex digits.
    #[error("document {index} ({path}) has sha256 {sha256:?}, which is not 64 hex digits")]
    BadDigest {
        /// Position in `docs`.
        index: usize,
        /// The document's path.
        path: String,
        /// The offending digest text.
        sha256: String,
    },
}

/// Why a document list file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// The file could not be read.
    #[error("cannot read document list {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("document list {} is not of the form {{\"seed\": N, \"docs\": [{{\"path\", \"size\", \"sha256\"}}]}}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where the JSON went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The file parses but its content is unusable.
    #[error("document list {} is invalid", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DocListProblem,
    },
}

impl DocList {
    /// Reads and checks a `docs.json`; every error names the file.
    pub fn load(path: &Path) -> Result<Self, DocsError> {
        let text = std::fs::read(path).map_err(|source| DocsError::Read { path: path.to_owned(), source })?;
        let list: DocList =
            serde_json::from_slice(&text).map_err(|source| DocsError::Parse { path: path.to_owned(), source })?;
        list.validate().map_err(|source| DocsError::Invalid { path: path.to_owned(), source })?;
        Ok(list)
    }

    /// Checks what `load` checks, for lists built in code: at least one
    /// document, paths usable as request targets, digests of 64 hex digits.
    pub fn validate(&self) -> Result<(), DocListProblem> {
        if self.docs.is_empty() {
            return Err(DocListProblem::Empty);
        }
        for (index, doc) in self.docs.iter().enumerate() {
            // A space or control character would break the request line, so
            // it is refused here, where the file can be named, not per request.
            let bad_char = doc.path.chars().any(|c| c.is_whitespace() || c.is_control());
            if !doc.path.starts_with('/') || bad_char {
                return Err(DocListProblem::BadPath { index, path: doc.path.clone() });
            }
            if doc.digest().is_none() {
                return Err(DocListProblem::BadDigest { index, path: doc.path.clone(), sha256: doc.sha256.clone() });
            }
        }
        Ok(())
    }
}

/// Chooses which document to request next.
///
/// Uniform over the documents: the set was generated with a web-like size
/// mix, so picking each file equally often reproduces that mix in the
/// bytes requested. Seeded ChaCha, with one stream per client, so a run
/// with the same seed asks for the same sequence on every client whatever
/// the interleaving.
#[derive(Debug, Clone)]
pub struct RequestPicker {
    rng: ChaCha8Rng,
    count: usize,
}

impl RequestPicker {
    /// A picker over `docs` for client `stream` of a run seeded with `seed`.
    pub fn new(docs: &DocList, seed: u64, stream: u64) -> Result<Self, DocListProblem> {
        if docs.docs.is_empty() {
            return Err(DocListProblem::Empty);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Ok(Self { rng, count: docs.docs.len() })
    }

    /// Index into `docs.docs` of the next document to request.
    pub fn next_index(&mut self) -> usize {
        self.rng.random_range(0..self.count)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn list(n: usize) -> DocList {
        DocList {
            seed: 1,
            docs: (0..n).map(|i| Doc { path: format!("/d{i}"), size: 4, sha256: DIGEST.into() }).collect(),
        }
    }

    fn write_temp(text: &str) -> std::io::Result<tempfile::NamedTempFile> {
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(text.as_bytes())?;
        Ok(file)
    }

    #[test]
    fn loads_the_guest_images_format() -> Result<(), Box<dyn std::error::Error>> {
        let file = write_temp(&format!(
            r#"{{"seed": 1, "docs": [{{"path": "/index.html", "size": 1234, "sha256": "{DIGEST}"}},
                {{"path": "/docs/f0000.txt", "size": 7, "sha256": "{DIGEST}"}}]}}"#
        ))?;
        let docs = DocList::load(file.path())?;
        assert_eq!(docs.seed, 1);
        assert_eq!(docs.docs[0], Doc { path: "/index.html".into(), size: 1234, sha256: DIGEST.into() });
        assert_eq!(docs.docs.len(), 2);
        assert_eq!(docs.docs[1].digest().map(hex::encode).as_deref(), Some(DIGEST));
        Ok(())
    }

    #[test]
    fn every_load_error_names_the_file() -> std::io::Result<()> {
        let missing = Path::new("/nonexistent/kfi/docs.json");
        let err = DocList::load(missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("/nonexistent/kfi/docs.json"), "{err}");

        let cases = [
            ("{\"seed\": 1}", "is not of the form"),
            ("{\"seed\": 1, \"docs\": []}", "is invalid"),
            ("{\"seed\": 1, \"docs\": [{\"path\": \"/a\", \"size\": 1, \"sha256\": \"xyz\"}]}", "is invalid"),
        ];
        for (text, want) in cases {
            let file = write_temp(text)?;
            let name = file.path().display().to_string();
            let err = DocList::load(file.path()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(&name) && err.contains(want), "{text}: {err}");
        }
        Ok(())
    }

    #[test]
    fn validation_names_the_bad_document() {
        let mut docs = list(3);
        docs.docs[1].path = "relative".into();
        assert_eq!(docs.validate(), Err(DocListProblem::BadPath { index: 1, path: "relative".into() }));
        docs.docs[1].path = "/with space".into();
        assert!(matches!(docs.validate(), Err(DocListProblem::BadPath { index: 1, .. })));
        docs.docs[1].path = "/ok".into();
        docs.docs[2].sha256 = DIGEST[..62].into();
        assert!(matches!(docs.validate(), Err(DocListProblem::BadDigest { index: 2, .. })));
        assert_eq!(list(0).validate(), Err(DocListProblem::Empty));
        assert_eq!(list(2).validate(), Ok(()));
    }

    #[test]
    fn picker_is_reproducible_per_stream_and_covers_the_set() -> Result<(), DocListProblem> {
        let docs = list(10);
        let draw = |seed, stream| -> Result<Vec<usize>, DocListProblem> {
            let mut picker = RequestPicker::new(&docs, seed, stream)?;
            Ok((0..2000).map(|_| picker.next_index()).collect())
        };
        let a = draw(7, 0)?;
        assert_eq!(a, draw(7, 0)?);
        assert_ne!(a, draw(7, 1)?);
        assert_ne!(a, draw(8, 0)?);
        let mut counts = [0usize; 10];
        for i in a {
            counts[i] += 1;
        }
        // Uniform: 200 expected per document; 120..280 is over 5 sigma wide.
        assert!(counts.iter().all(|c| (120..280).contains(c)), "{counts:?}");
        assert!(RequestPicker::new(&list(0), 1, 0).is_err());
        Ok(())
    }
}
