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

/// The release the updatable tiny image updates to: the lock's other
/// kernel.
pub const UPDATE_TO: &str = "6.1.0-57-amd64";

/// The tiny image that boots the lock's default kernel and carries
/// [`UPDATE_TO`] to update to, built on first use.
pub fn tiny_updatable_image() -> GuestImage {
    let cache = cache();
    let lock = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel.lock"));
    let resolve = |release| {
        kernel::resolve(&cache, &KernelChoice::locked(lock, release).expect("kernel.lock"), &|m| eprintln!("{m}"))
            .expect("Debian kernel")
    };
    let (old, new) = (resolve(None), resolve(Some(UPDATE_TO)));
    assert_ne!(old.release, new.release, "kernel.lock's default is the kernel the tests update to");
    guest::ensure_updatable(&cache, &guest::Recipe::Tiny, &old, &new, &|m| eprintln!("{m}")).expect("tiny image")
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

/// The TCP addresses process `pid` listens on (from `/proc/net/tcp{,6}`,
/// matched to the process's socket descriptors), as addresses to connect
/// to: a wildcard listener is reached on loopback.
pub fn tcp_listeners(pid: u32) -> Vec<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if cols.len() < 10 || cols[3] != "0A" || !inodes.contains(cols[9]) {
                continue;
            }
            let Some((_, port)) = cols[1].split_once(':') else { continue };
            let port = u16::from_str_radix(port, 16).expect("a hex port");
            out.push(if v6 {
                SocketAddr::from((Ipv6Addr::LOCALHOST, port))
            } else {
                SocketAddr::from((Ipv4Addr::LOCALHOST, port))
            });
        }
    }
    out
}
