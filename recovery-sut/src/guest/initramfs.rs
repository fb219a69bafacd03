//! An initramfs (newc cpio) assembled in memory order from a list of
//! entries. Kept uncompressed: under TCG the kernel's gunzip of a few
//! megabytes costs more boot time than reading the larger image.

use std::io::{self, Write};
use std::path::Path;

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its content and permission bits.
    File {
        /// Content.
        data: Vec<u8>,
        /// Permission bits (e.g. 0o755).
        perm: u32,
    },
    /// A symbolic link to a target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// An ordered list of paths (without a leading `/`) and their nodes.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: Vec<(String, Node)>,
}

impl Initramfs {
    /// Adds a directory (and, before it, any missing parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.entries.iter().any(|(p, _)| p == path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push((path.to_string(), Node::Dir));
    }

    /// Adds a file, creating its parent directories.
    pub fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) {
        self.add(path, Node::File { data, perm });
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Node::Symlink(target.to_string()));
    }

    /// Adds a character device.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.add(path, Node::CharDev { major, minor });
    }

    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push((path.to_string(), node));
    }

    /// Copies a host file in, keeping its permission bits.
    pub fn copy_from(&mut self, path: &str, host: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host)?;
        let perm = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(path, data, perm);
        Ok(())
    }

    /// Writes the archive to a file and syncs it.
    pub fn write_file(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::create(path)?;
        let writer = self.write_to(io::BufWriter::new(file))?;
        writer.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
    }

    /// Writes the archive in newc format.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (ino, (path, node)) in self.entries.iter().enumerate() {
            let builder = cpio::newc::Builder::new(path).ino(ino as u32 + 1).nlink(1);
            let (builder, data): (_, &[u8]) = match node {
                Node::Dir => (builder.mode(0o040755).nlink(2), &[]),
                Node::File { data, perm } => (builder.mode(0o100000 | perm), data),
                Node::Symlink(target) => (builder.mode(0o120777), target.as_bytes()),
                Node::CharDev { major, minor } => (builder.mode(0o020600).rdev_major(*major).rdev_minor(*minor), &[]),
            };
            let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{path} is over 4 GiB")))?;
            let mut writer = builder.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        cpio::newc::trailer(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back_with_parents_before_children() {
        let mut fs = Initramfs::default();
        fs.file("etc/kfi/agent", b"#!/bin/sh\n".to_vec(), 0o755);
        fs.symlink("bin/sh", "busybox");
        fs.char_dev("dev/console", 5, 1);
        let bytes = fs.write_to(Vec::new()).unwrap();

        let mut names = Vec::new();
        let mut rest: &[u8] = &bytes;
        loop {
            let reader = cpio::newc::Reader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mode()));
            rest = reader.finish().unwrap();
        }
        let order: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["etc", "etc/kfi", "etc/kfi/agent", "bin", "bin/sh", "dev", "dev/console"]);
        assert_eq!(names[2].1, 0o100755);
        assert_eq!(names[6].1, 0o020600);
    }
}
