//! The `debian` profile: Debian bookworm (minbase, systemd, Apache, PHP,
//! MariaDB) made by debootstrap, on an ext4 root built with `mke2fs -d` (no
//! loop mounts), booted through a busybox initramfs that loads the drivers
//! and switches root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{tiny, BuildSpec, GuestError, Profile, AGENT_SH};
use crate::cache::{Cache, CacheError};
use crate::kernel::Kernel;
use crate::tools;

const INIT_SH: &str = include_str!("../../guest-files/debian-init.sh");
const PHASES_SH: &str = include_str!("../../guest-files/debian-phases.sh");

/// Packages on top of minbase. The RUBiS workload needs PHP with MySQL
/// support and MariaDB; iproute2 configures the network.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "iproute2",
    "procps",
    "apache2",
    "libapache2-mod-php",
    "php-mysql",
    "mariadb-server",
    "mariadb-client",
];

const SUITE: &str = "bookworm";
const ROOTFS_MIB: u64 = 2048;
const DATA_DISK_MIB: u64 = 256;

const AGENT_UNIT: &str = "[Unit]
Description=kfi guest agent (boot phases and heartbeat)
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target

[Service]
ExecStart=/usr/local/sbin/kfi-phases
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
";

const NET_UNIT: &str = "[Unit]
Description=kfi static network for QEMU user networking
Before=network.target
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr add 10.0.2.15/24 dev eth0
ExecStart=/sbin/ip route add default via 10.0.2.2

[Install]
WantedBy=multi-user.target
";

const FSTAB: &str = "/dev/vda / ext4 rw,errors=remount-ro 0 1
";

/// Mounts the data disk as its own step, not through fstab: without udev
/// (which costs seconds under TCG) systemd never sees /dev/vdb "appear",
/// and recovery strategies need "data disk mounted" as a boundary they
/// control.
const DATA_UNIT: &str = "[Unit]
Description=kfi data disk on /data
DefaultDependencies=no
After=local-fs.target
Before=apache2.service mariadb.service

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
# The phase-restore boundary: with kfi.hold=userland on the kernel command
# line the agent reports `held` and waits for the host to snapshot.
ExecStartPre=/bin/sh -c 'if grep -qw kfi.hold=userland /proc/cmdline; then exec /usr/local/sbin/kfi-agent hold; fi'
ExecStart=/bin/mount -t ext4 -o rw,noatime /dev/vdb /data
ExecStop=/bin/umount /data

[Install]
WantedBy=multi-user.target
";

/// Units that only slow an emulated boot and have no part in experiments.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "logrotate.timer",
];

/// What, besides the shared inputs, decides the debian image's content.
pub(crate) const RECIPE: &str = concat!(
    include_str!("../../guest-files/debian-init.sh"),
    include_str!("../../guest-files/debian-phases.sh"),
    include_str!("debian.rs"),
);

/// The Debian mirror: `KFI_DEBIAN_MIRROR`, else the first source in the
/// host's apt configuration that serves the suite.
fn mirror() -> Result<String, GuestError> {
    if let Ok(m) = std::env::var("KFI_DEBIAN_MIRROR") {
        return Ok(m);
    }
    let mut candidates = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
            };
            if field("Suites:").split_whitespace().any(|s| s == SUITE) {
                candidates.extend(field("URIs:").split_whitespace().map(str::to_string));
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[')).collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == SUITE {
                candidates.push(words[1].to_string());
            }
        }
    }
    candidates.into_iter().next().ok_or_else(|| {
        GuestError::build(
            Profile::Debian,
            "finding a Debian mirror",
            format!("no apt source serves `{SUITE}`; set KFI_DEBIAN_MIRROR to a Debian mirror URL"),
        )
    })
}

fn write(path: PathBuf, text: &str, mode: u32) -> Result<(), GuestError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
    }
    fs::write(&path, text).map_err(|e| CacheError::io("write", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| CacheError::io("chmod", &path, e))?;
    Ok(())
}

fn symlink(target: &str, link: PathBuf) -> Result<(), GuestError> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
    }
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(target, &link).map_err(|e| CacheError::io("symlink", &link, e).into())
}

/// Turns a fresh debootstrap tree into the kfi guest.
fn configure(root: &Path, docs: &[(String, Vec<u8>)]) -> Result<(), GuestError> {
    write(root.join("etc/hostname"), "kfi-debian\n", 0o644)?;
    write(root.join("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 kfi-debian\n", 0o644)?;
    write(root.join("etc/fstab"), FSTAB, 0o644)?;
    fs::create_dir_all(root.join("data")).map_err(|e| CacheError::io("create", root.join("data"), e))?;
    write(root.join("usr/local/sbin/kfi-agent"), AGENT_SH, 0o755)?;
    write(root.join("usr/local/sbin/kfi-phases"), PHASES_SH, 0o755)?;
    write(root.join("etc/systemd/system/kfi-agent.service"), AGENT_UNIT, 0o644)?;
    write(root.join("etc/systemd/system/kfi-net.service"), NET_UNIT, 0o644)?;
    write(root.join("etc/systemd/system/kfi-data.service"), DATA_UNIT, 0o644)?;
    let units = root.join("etc/systemd/system");
    symlink("/etc/systemd/system/kfi-agent.service", units.join("sysinit.target.wants/kfi-agent.service"))?;
    symlink("/etc/systemd/system/kfi-net.service", units.join("multi-user.target.wants/kfi-net.service"))?;
    symlink("/etc/systemd/system/kfi-data.service", units.join("multi-user.target.wants/kfi-data.service"))?;
    for unit in MASKED_UNITS {
        symlink("/dev/null", units.join(unit))?;
    }
    // Serve the same document set as the tiny guest.
    let www = root.join("var/www/html");
    for (url, data) in docs {
        let path = www.join(url.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
        }
        fs::write(&path, data).map_err(|e| CacheError::io("write", &path, e))?;
    }
    // Package caches only make the image larger.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = fs::read_dir(root.join(dir)) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn build(
    cache: &Cache,
    out: &Path,
    kernel: &Kernel,
    docs: &[(String, Vec<u8>)],
    progress: &dyn Fn(&str),
) -> Result<BuildSpec, GuestError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(GuestError::build(
            Profile::Debian,
            "starting debootstrap",
            "debootstrap needs root (it chroots and creates device nodes): run `kfi guest build debian` as root",
        ));
    }
    let mirror = mirror()?;
    let scratch =
        tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
    let root = scratch.path().join("rootfs");
    progress(&format!("debootstrap {SUITE} (minbase + {} packages) from {mirror}; about a minute", PACKAGES.len()));
    tools::DEBOOTSTRAP.run(
        [
            "--variant=minbase".to_string(),
            format!("--include={}", PACKAGES.join(",")),
            SUITE.to_string(),
            root.display().to_string(),
            mirror,
        ],
        None,
    )?;
    progress("configuring the root filesystem");
    configure(&root, docs)?;
    progress(&format!("making the {ROOTFS_MIB} MiB ext4 root disk"));
    super::make_ext4(&out.join("rootfs.img"), &root, "kfi-root", ROOTFS_MIB)?;
    progress("making the data disk");
    super::make_data_disk(out, DATA_DISK_MIB)?;

    progress("assembling the debian initramfs");
    let mut initramfs = tiny::base_initramfs(Profile::Debian, kernel)?;
    initramfs.file("init", INIT_SH.as_bytes().to_vec(), 0o755);
    initramfs.dir("newroot");
    let path = out.join("initramfs.cpio");
    initramfs.write_file(&path).map_err(|e| CacheError::io("write", &path, e))?;
    Ok(BuildSpec { cmdline: "net.ifnames=0".into(), rootfs: Some("rootfs.img".into()), min_memory_mib: 384 })
}
