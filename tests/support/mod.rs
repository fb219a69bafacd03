//! What the end-to-end tests of the `kfi` binary share.
#![allow(dead_code)] // each test crate uses its own part

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};

/// The `kfi` binary under test.
pub fn kfi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kfi"))
}

/// A `kfi` started in the background, killed when dropped: a test that
/// fails before it stops kfi itself must not leave kfi, and with it its
/// guests, running.
pub struct Spawned(pub Child);

impl Spawned {
    /// Starts `kfi ARGS` with stdout piped and stderr discarded.
    pub fn piped(args: &[&str]) -> Spawned {
        let child = kfi().args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn kfi");
        Spawned(child)
    }

    /// Starts `cmd`.
    pub fn start(cmd: &mut Command) -> Spawned {
        Spawned(cmd.spawn().expect("spawn kfi"))
    }
}

impl Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already reaped after a normal end: both calls then do nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
