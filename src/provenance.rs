//! How a result was obtained, as every record carries it: the kfi commit,
//! the kernel (release, package, build id), the image recipe and (debian)
//! its installed packages, QEMU, the accelerator and the host.

use std::path::Path;

use analysis::record::Provenance;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::campaign::recorded;
use crate::setup::Prepared;

/// The provenance of results from `prepared` with `seed`, and the debian
/// image's package list its `image_packages` hash names (to be kept in the
/// store).
pub fn of(prepared: &Prepared, seed: u64) -> Result<(Provenance, Option<String>)> {
    let packages = prepared.image.packages();
    let (kfi_commit, kfi_dirty) = match git_state(Path::new(env!("CARGO_MANIFEST_DIR"))) {
        Some((commit, dirty)) => (Some(commit), Some(dirty)),
        None => (None, None),
    };
    let provenance = Provenance {
        accel: recorded::accel(prepared.decision.accel),
        qemu_version: recovery_sut::vm::qemu_version().context("asking QEMU for its version")?,
        kernel_version: prepared.kernel.release.clone(),
        profile: recorded::profile(prepared.profile),
        ram_mb: prepared.memory_mib,
        seed,
        kfi_version: env!("CARGO_PKG_VERSION").to_string(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
        kfi_commit,
        kfi_dirty,
        kernel_origin: Some(prepared.kernel.identity()),
        kernel_build_id: recovery_sut::kernel::build_id(&prepared.kernel),
        image_recipe: Some(prepared.image.meta.recipe.clone()),
        image_packages: packages.as_deref().map(|p| hex::encode(Sha256::digest(p.as_bytes()))),
        host_cpu: host_cpu(),
        host_cores: std::thread::available_parallelism().ok().and_then(|n| u32::try_from(n.get()).ok()),
    };
    Ok((provenance, packages))
}

/// The checkout's HEAD commit and whether tracked files outside
/// `results/` differ from it (generated output being rewritten is not a
/// change to what ran); `None` outside a git checkout (or without git).
pub fn git_state(repo: &Path) -> Option<(String, bool)> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let status = git(&["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"])?;
    Some((commit, !status.is_empty()))
}

/// `model name` of the first CPU in /proc/cpuinfo.
fn host_cpu() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_checkout_names_its_commit() {
        let (commit, _) = git_state(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("tests run in a git checkout");
        assert_eq!(commit.len(), 40, "{commit}");
        assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
        assert!(git_state(&std::env::temp_dir().join("kfi-no-such-dir")).is_none());
        assert!(host_cpu().is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn rewritten_results_do_not_make_a_checkout_dirty_but_code_does() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap();
            assert!(ok.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(dir.path().join("results/report.md"), "old").unwrap();
        std::fs::write(dir.path().join("main.rs"), "fn main() {}").unwrap();
        git(&["add", "."]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]);
        assert_eq!(git_state(dir.path()).map(|s| s.1), Some(false));
        std::fs::remove_file(dir.path().join("results/report.md")).unwrap();
        assert_eq!(git_state(dir.path()).map(|s| s.1), Some(false), "results/ is generated output");
        std::fs::write(dir.path().join("main.rs"), "fn main() { changed() }").unwrap();
        assert_eq!(git_state(dir.path()).map(|s| s.1), Some(true));
    }
}
