//! Shared helpers for the VM tests: the real cache, the real tiny image,
//! and waiting on conditions.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use recovery_sut::{guest, kernel, Cache, GuestImage, KernelChoice};

/// The user's kfi cache (`$KFI_CACHE`), so CI reuses kernels and images.
pub fn cache() -> Cache {
    Cache::from_env().expect("kfi cache")
}

/// The tiny image, built on first use.
pub fn tiny_image() -> GuestImage {
    let cache = cache();
    let kernel = kernel::resolve(
        &cache,
        &KernelChoice::locked(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel.lock")), None)
            .expect("kernel.lock"),
        &|m| eprintln!("{m}"),
    )
    .expect("Debian kernel");
    guest::ensure(&cache, &guest::Recipe::Tiny, &kernel, &|m| eprintln!("{m}")).expect("tiny image")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Whether a process exists and is not a zombie.
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
        }
        Err(_) => false,
    }
}
