//! End-to-end tests of the `kfi` binary: the orphan guarantee under
//! `kill -9`, the boot JSON, and the errors users see on bad input.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use recovery_sut::{guest, kernel, Cache, KernelChoice};
use support::{kfi, Spawned};

mod support;

/// The real cache, with the kernel and tiny image present.
fn real_cache() -> Cache {
    let cache = Cache::from_env().unwrap();
    let k = kernel::resolve(&cache, &KernelChoice::Locked(kfi::setup::locked_kernel(None).unwrap()), &|_| {}).unwrap();
    guest::ensure(&cache, &guest::Recipe::Tiny, &k, &|_| {}).unwrap();
    cache
}

fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or_default().to_string();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((child, comm));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|st| st != "Z"))
        .unwrap_or(false)
}

#[test]
fn kill_9_of_kfi_leaves_no_qemu_behind() {
    real_cache();
    let mut child = Spawned::piped(&["boot", "--guest", "tiny", "--accel", "tcg"]);
    let kfi_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("http-ready"));
    assert!(ready, "kfi boot never reported http-ready");
    let qemu: Vec<u32> =
        children_of(kfi_pid).into_iter().filter(|(_, c)| c.starts_with("qemu-system")).map(|(p, _)| p).collect();
    assert_eq!(qemu.len(), 1, "expected one QEMU child of kfi");

    // SAFETY: plain kill(2) on a child we spawned.
    assert_eq!(unsafe { libc::kill(kfi_pid as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(qemu[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(qemu[0]), "QEMU {} outlived kfi after kill -9", qemu[0]);
}

#[test]
fn boot_json_has_the_documented_fields() {
    real_cache();
    let out = kfi().args(["boot", "--guest", "tiny", "--until-ready", "--json", "--accel", "tcg"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["accel"], "tcg");
    assert!(v["qemu_version"].as_str().unwrap().starts_with(char::is_numeric));
    assert!(v["kernel_version"].as_str().unwrap().contains('.'));
    let http = v["http_ready_s"].as_f64().unwrap();
    let phases = v["phases"].as_object().unwrap();
    for name in ["kernel", "userland", "services-ready"] {
        let at = phases[name].as_f64().unwrap_or_else(|| panic!("phase {name} missing"));
        assert!(at > 0.0 && at <= http + 5.0, "{name} at {at}, http at {http}");
    }
    assert!(phases["kernel"].as_f64() < phases["userland"].as_f64());
}

#[test]
fn unknown_profile_lists_the_real_ones() {
    let out = kfi().args(["boot", "--guest", "ubuntu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ubuntu") && err.contains("tiny") && err.contains("debian"), "{err}");
}

#[test]
fn missing_qemu_names_the_package_to_install() {
    real_cache();
    let out = kfi()
        .args(["boot", "--guest", "tiny", "--until-ready", "--accel", "tcg"])
        .env("KFI_QEMU", "/nonexistent/qemu")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
}

#[test]
fn missing_user_kernel_is_named() {
    let out = kfi().args(["guest", "build", "tiny", "--kernel", "/nonexistent/bzImage"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kernel /nonexistent/bzImage does not exist"), "{err}");
}

#[test]
fn kernel_commands_refuse_what_the_lock_does_not_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = kfi().args(["kernel", "lock"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("(default 6.1.0-56-amd64)"), "{text}");
    assert!(text.contains("linux-image-6.1.0-56-amd64-dbg=6.1.192-2 sha256 e481662a"), "{text}");

    // --from with a file no lock entry names: refused, nothing cached.
    let bogus = tmp.path().join("bogus.deb");
    std::fs::write(&bogus, b"not a locked kernel").unwrap();
    let out = kfi().args(["kernel", "fetch", "--from"]).arg(&bogus).env("KFI_CACHE", &cache).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bogus.deb has SHA-256"), "{err}");
    assert!(err.contains("which no kernel") && err.contains("kernel.lock"), "{err}");
    assert!(!cache.join("debs/bogus.deb").exists());

    // A lock naming a version apt does not know (no download is tried).
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kernel.lock")).unwrap();
    let old = tmp.path().join("old.lock");
    std::fs::write(&old, lock.replace("6.1.192-2", "0.0-0")).unwrap();
    let out = kfi().args(["kernel", "fetch"]).env("KFI_KERNEL_LOCK", &old).env("KFI_CACHE", &cache).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("apt knows no linux-image-6.1.0-56-amd64=0.0-0"), "{err}");
    assert!(err.contains(&old.display().to_string()) && err.contains("kfi kernel lock --update"), "{err}");
    assert!(err.contains("kfi kernel fetch --from FILE"), "{err}");
}

fn image_dir(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache.join("guests"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("tiny-"))
        .expect("a tiny image")
}

#[test]
fn corrupt_or_truncated_image_is_refused_and_rebuild_repairs_it() {
    let real = real_cache();
    // A private cache sharing the real kernels, so corrupting it harms no
    // other test.
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real.root().join("kernels"), tmp.path().join("kernels")).unwrap();
    let run = |args: &[&str]| kfi().args(args).env("KFI_CACHE", tmp.path()).output().unwrap();
    assert!(run(&["guest", "build", "tiny"]).status.success());
    let dir = image_dir(tmp.path());

    let initramfs = dir.join("initramfs.cpio");
    let len = std::fs::metadata(&initramfs).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&initramfs).unwrap().set_len(len / 2).unwrap();
    let out = run(&["boot", "--guest", "tiny", "--until-ready", "--accel", "tcg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupt") && err.contains("initramfs.cpio"), "{err}");
    assert!(err.contains("kfi guest build tiny --force"), "{err}");

    assert!(run(&["guest", "build", "tiny", "--force"]).status.success());
    assert!(run(&["guest", "verify", "tiny"]).status.success());

    // A flipped byte in the (large) data disk, same size.
    let data = dir.join("data.img");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[4096] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
    let out = run(&["guest", "verify", "tiny"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.img") && err.contains("SHA-256"), "{err}");
}

/// The realistic guest end to end: debootstrap build (cached after the
/// first run), then a boot to a correct answer from Apache with every phase.
#[test]
fn debian_guest_builds_and_boots_to_apache() {
    real_cache();
    let build = kfi().args(["guest", "build", "debian"]).output().unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let out = kfi().args(["boot", "--guest", "debian", "--until-ready", "--json", "--accel", "tcg"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["profile"], "debian");
    let phases = v["phases"].as_object().unwrap();
    let at =
        |name: &str| phases.get(name).and_then(|p| p.as_f64()).unwrap_or_else(|| panic!("phase {name} missing: {v}"));
    assert!(
        at("kernel") < at("userland")
            && at("userland") <= at("data-mounted")
            && at("data-mounted") <= at("services-ready")
    );
    assert!(v["http_ready_s"].as_f64().unwrap() > at("kernel"));
}

/// The lab's headline measurement end to end: crash the tiny guest under
/// client load, recover with each strategy, compare client-seen downtime.
#[test]
fn recover_json_shows_snapshot_restore_far_faster_than_reboot() {
    real_cache();
    let out = kfi()
        .args(["recover", "--guest", "tiny", "--repeat", "1", "--json", "--accel", "tcg", "--warmup", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    for key in ["accel", "qemu_version", "kernel_version", "seed", "crash"] {
        assert!(!v[key].is_null(), "{key} missing: {v}");
    }
    let strategies = v["strategies"].as_array().unwrap();
    let median = |name: &str| {
        let s = strategies.iter().find(|s| s["strategy"] == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(s["recovered"], s["trials"], "{name} left a failure unrecovered: {s}");
        s["downtime_median_s"].as_f64().unwrap()
    };
    let (reboot, phase, service) = (median("full-reboot"), median("phase-restore"), median("service-restore"));
    assert!(reboot > 1.0, "a full reboot cannot take {reboot} s: it boots a kernel");
    assert!(phase < reboot / 3.0, "phase-restore {phase} s vs full-reboot {reboot} s");
    assert!(service < reboot / 3.0, "service-restore {service} s vs full-reboot {reboot} s");
    for s in strategies {
        assert_eq!(s["fallbacks"], 0, "a strategy fell back with a read-only workload: {s}");
    }
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    for t in trials {
        assert_eq!(t["timing"]["cause"], "guest-panicked", "{t}");
        assert!(t["correct"].as_u64().unwrap() > 0);
        // The availability probe saw each outage by its own requests; a
        // reboot's outage is seconds by either measure.
        let probe = t["probe_outage_s"].as_f64().unwrap_or_else(|| panic!("no probe outage: {t}"));
        assert!(probe > 0.0, "{t}");
        if t["strategy"] == "full-reboot" {
            assert!(probe > 1.0, "the probe cannot see a reboot end in {probe} s: {t}");
        }
    }
}

/// `--kernel`/`--modules`: a kernel of the user's own boots the tiny guest
/// (here the cached Debian files, passed as if they were the user's).
#[test]
fn a_user_supplied_kernel_and_module_tree_boot() {
    let cache = real_cache();
    let k = kernel::resolve(&cache, &KernelChoice::Locked(kfi::setup::locked_kernel(None).unwrap()), &|_| {}).unwrap();
    let modules = k.modules[0].1.parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let out = kfi()
        .args(["boot", "--guest", "tiny", "--until-ready", "--json", "--accel", "tcg", "--kernel"])
        .arg(&k.vmlinuz)
        .arg("--modules")
        .arg(&modules)
        .env("KFI_CACHE", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kernel_version"], k.release.as_str());
    assert!(v["kernel"].as_str().unwrap().contains("user-supplied"), "{v}");
}

#[test]
fn sut_run_recovers_injected_crashes_and_stops_on_ctrl_c() {
    real_cache();
    let mut child =
        Spawned::piped(&["sut", "run", "--guest", "tiny", "--accel", "tcg", "--crash-every", "4", "--json"]);
    let kfi_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logged = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        logged.push(entry);
        if logged.len() == 2 {
            break;
        }
    }
    assert_eq!(logged.len(), 2, "kfi sut run logged fewer than two recoveries: {logged:?}");
    for (i, entry) in logged.iter().enumerate() {
        assert_eq!(entry["n"], i + 1);
        assert_eq!(entry["injected"], true);
        assert_eq!(entry["timing"]["cause"], "guest-panicked", "{entry}");
        assert_eq!(entry["timing"]["strategy"], "service-restore", "{entry}");
    }
    let qemu: Vec<u32> =
        children_of(kfi_pid).into_iter().filter(|(_, c)| c.starts_with("qemu-system")).map(|(p, _)| p).collect();
    // The running guest, and the standby QEMU waiting for the next restore.
    assert_eq!(qemu.len(), 2, "expected two QEMU children of kfi: {qemu:?}");
    // SAFETY: plain kill(2) on a child we spawned.
    assert_eq!(unsafe { libc::kill(kfi_pid as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kfi sut run ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    for pid in qemu {
        assert!(!alive(pid), "QEMU {pid} outlived kfi sut run");
    }
}

/// Whether process `pid`'s command line contains `needle`.
fn cmdline_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
}

#[test]
fn kill_9_during_an_updates_shadow_phase_leaves_no_qemu_behind() {
    real_cache();
    let mut child = Spawned::piped(&[
        "update",
        "--guest",
        "tiny",
        "--accel",
        "tcg",
        "--to",
        "6.1.0-57-amd64",
        "--strategy",
        "shadow-reboot",
        "--repeat",
        "1",
        "--json",
    ]);
    let kfi_pid = child.id();
    // The shadow is the QEMU cut off the network (`restrict=on`); the
    // primary and its standby run beside it. The first run builds the
    // updatable image (seconds) and fetches the second kernel.
    let mut qemu = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        qemu = children_of(kfi_pid).into_iter().filter(|(_, c)| c.starts_with("qemu-system")).map(|(p, _)| p).collect();
        if qemu.iter().any(|&p| cmdline_has(p, "restrict=on")) {
            break;
        }
        assert!(alive(kfi_pid), "kfi update ended before its shadow phase");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(qemu.iter().any(|&p| cmdline_has(p, "restrict=on")), "no shadow QEMU seen within 300 s");
    assert!(qemu.len() >= 2, "the primary serves beside the shadow: {qemu:?}");

    // SAFETY: plain kill(2) on a child we spawned.
    assert_eq!(unsafe { libc::kill(kfi_pid as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while qemu.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = qemu.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "QEMU {left:?} outlived kfi update after kill -9 in the shadow phase");
}
