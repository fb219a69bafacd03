//! What the `debian` image serves besides the document set: a web site
//! with its database, handed in by the caller as plain data. This crate
//! knows how to install a site and load its database at build time, not
//! what the site is (the RUBiS pages and data set live in `workloads`).

use std::fmt;

use sha2::{Digest, Sha256};

/// One file of a site.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteFile {
    /// Path relative to the web server's document root (`/var/www/html`
    /// in the debian guest), e.g. `rubis/Home.php`: the file is served at
    /// `/` + this path.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

impl fmt::Debug for SiteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteFile({}, {} bytes, {:o})", self.path, self.data.len(), self.mode)
    }
}

/// A site the `debian` image installs: its files under the document root
/// and the SQL that creates and fills its database from nothing, run once
/// at build time by a private MariaDB server whose datadir becomes the
/// data disk's `mysql/`.
///
/// Every byte of it feeds the image's recipe hash: changing a page, the
/// schema or the generated data rebuilds the image.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceSite {
    /// The site's files.
    pub files: Vec<SiteFile>,
    /// Creates the database, its account and its data.
    pub database_sql: String,
}

impl fmt::Debug for ServiceSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSite")
            .field("files", &self.files)
            .field("database_sql", &format_args!("{} bytes", self.database_sql.len()))
            .finish()
    }
}

impl ServiceSite {
    /// Why a file's path cannot be installed under the document root, if
    /// one cannot: empty, absolute, `.`/`..` components, or named twice.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for file in &self.files {
            let p = &file.path;
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(format!("site file path `{p}` is not a plain path relative to the document root"));
            }
            if !seen.insert(p.as_str()) {
                return Err(format!("site file `{p}` is given twice"));
            }
            if file.mode & !0o7777 != 0 {
                return Err(format!("site file `{p}` has mode {:o}, not permission bits", file.mode));
            }
        }
        Ok(())
    }

    /// Feeds every path, mode and byte into `h`, each field length-prefixed
    /// so that no two sites hash alike.
    pub(crate) fn hash_into(&self, h: &mut Sha256) {
        h.update(format!("site {} files\n", self.files.len()));
        for file in &self.files {
            h.update(format!("file {} {:o} {} {}\n", file.path.len(), file.mode, file.data.len(), file.path));
            h.update(&file.data);
        }
        h.update(format!("database {}\n", self.database_sql.len()));
        h.update(self.database_sql.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> ServiceSite {
        ServiceSite {
            files: vec![
                SiteFile { path: "shop/lib.php".into(), data: b"<?php\n".to_vec(), mode: 0o644 },
                SiteFile { path: "shop/Home.php".into(), data: b"home".to_vec(), mode: 0o644 },
            ],
            database_sql: "CREATE DATABASE shop;\n".into(),
        }
    }

    fn digest(s: &ServiceSite) -> Vec<u8> {
        let mut h = Sha256::new();
        s.hash_into(&mut h);
        h.finalize().to_vec()
    }

    #[test]
    fn every_byte_path_and_mode_changes_the_hash() {
        let base = digest(&site());
        let mut changed = Vec::new();
        let mut s = site();
        s.files[1].data.push(b'!');
        changed.push(s);
        let mut s = site();
        s.files[0].mode = 0o755;
        changed.push(s);
        let mut s = site();
        s.files[1].path = "shop/home.php".into();
        changed.push(s);
        let mut s = site();
        s.database_sql.push_str("USE shop;\n");
        changed.push(s);
        // Moving a byte from one file's path to its content is a change too.
        let mut s = site();
        s.files[1] = SiteFile { path: "shop/Home.ph".into(), data: b"phome".to_vec(), mode: 0o644 };
        changed.push(s);
        let mut s = site();
        s.files.pop();
        changed.push(s);
        for s in &changed {
            assert_ne!(digest(s), base, "{s:?}");
        }
        assert_eq!(digest(&site()), base);
    }

    #[test]
    fn paths_must_stay_under_the_document_root() {
        assert_eq!(site().check(), Ok(()));
        for bad in ["", "/etc/passwd", "shop/../../etc/passwd", "shop//x", "./x", "shop/"] {
            let mut s = site();
            s.files[0].path = bad.into();
            assert!(s.check().is_err(), "`{bad}` accepted");
        }
        let mut s = site();
        s.files[1].path = s.files[0].path.clone();
        assert!(s.check().unwrap_err().contains("twice"));
        let mut s = site();
        s.files[0].mode = 0o100644;
        assert!(s.check().is_err());
    }
}
