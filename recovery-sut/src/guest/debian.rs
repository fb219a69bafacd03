//! The `debian` profile: Debian bookworm (minbase, systemd, Apache, PHP,
//! MariaDB) made by debootstrap, on an ext4 root built with `mke2fs -d` (no
//! loop mounts), booted through a busybox initramfs that loads the drivers
//! and switches root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{tiny, BuildSpec, GuestError, Profile, ServiceSite, AGENT_SH};
use crate::cache::{Cache, CacheError};
use crate::kernel::Kernel;
use crate::tools;

const INIT_SH: &str = include_str!("../../guest-files/debian-init.sh");
const PHASES_SH: &str = include_str!("../../guest-files/debian-phases.sh");

/// Packages on top of minbase. The site (RUBiS) needs PHP with MySQL
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
    // kexec-reboot: the guest loads this very kernel as its crash kernel.
    "kexec-tools",
];

const SUITE: &str = "bookworm";
/// The least guest RAM the services run in.
pub(crate) const MIN_MEMORY_MIB: u32 = 384;
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
/// control. It is ordered after Apache and before MariaDB: that is the
/// profile's phase boundary (`Profile::phase_boundary`), where a booting
/// guest told `kfi.hold=userland` holds for the phase snapshot, so that a
/// phase restore starts only what depends on the data disk.
const DATA_UNIT: &str = "[Unit]
Description=kfi data disk on /data
DefaultDependencies=no
After=local-fs.target apache2.service
Before=mariadb.service

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
# The phase boundary: with kfi.hold=userland on the kernel command line
# the agent reports `held` and waits for the host to snapshot.
ExecStartPre=/bin/sh -c 'if grep -qw kfi.hold=userland /proc/cmdline; then exec /usr/local/sbin/kfi-agent hold; fi'
ExecStart=/bin/mount -t ext4 -o rw,noatime /dev/vdb /data
ExecStop=/bin/umount /data

[Install]
WantedBy=multi-user.target
";

/// MariaDB keeps its datadir on the data disk: the recovery VMM never rolls
/// that disk back, so a write the site acknowledged must be there and not
/// on the root disk, which snapshot restores return to an older state.
/// The buffer pool and redo log are sized for a small guest and a 256 MiB
/// data disk; a small redo log also bounds what crash recovery replays.
/// A phase restore starts MariaDB on the recovery path, so what its start
/// does for nothing here goes: the MyISAM key cache and Aria page cache
/// (128 MiB each by default, set up at start; the site's tables are
/// InnoDB), the buffer pool's dump and reload (a reload reads pages in
/// the background while the first requests wait for the one vCPU), the
/// TCP listener (PHP connects through the socket), extra I/O threads, and
/// the 12 MiB temporary tablespace written out in full at every start.
/// (Debian's `mariadb.socket` holds the socket from early boot: requests
/// sent while MariaDB starts wait in its backlog instead of failing.)
const MARIADB_CNF: &str = "[mysqld]
datadir = /data/mysql
innodb_buffer_pool_size = 64M
innodb_log_file_size = 16M
innodb_buffer_pool_dump_at_shutdown = OFF
innodb_buffer_pool_load_at_startup = OFF
innodb_read_io_threads = 1
innodb_write_io_threads = 2
innodb_purge_threads = 1
innodb_temp_data_file_path = ibtmp1:1M:autoextend
key_buffer_size = 1M
aria_pagecache_buffer_size = 8M
skip_networking = ON
performance_schema = OFF
skip_name_resolve = ON
";

/// The data disk is mounted by kfi-data.service, after the phase snapshot
/// point: MariaDB must not start without it, or it would create an empty
/// datadir on the root disk's /data.
const MARIADB_DROPIN: &str = "[Unit]
Requires=kfi-data.service
After=kfi-data.service

[Service]
# galera_recovery asks my_print_defaults whether Galera is on (it is not)
# in two more processes on every start.
ExecStartPre=
# debian-start checks for an upgrade (nothing to do: the datadir was made
# by this very package) and checks every table in the background, which
# under emulation takes CPU from the service being measured.
ExecStartPost=
";

/// The data disk's marker, as every profile's data disk has it.
const DATA_DISK_MARKER: &[u8] = b"kfi data disk: writes here survive every recovery strategy\n";

/// Where the build runs its one-off server inside the chroot.
const BUILD_SOCKET: &str = "/run/mysqld/kfi-build.sock";

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
    // Debian's own kexec handling (a kexec'd reboot, kdump): kfi loads the
    // crash kernel itself (kfi-phases) and reboots through the VMM.
    "kexec-load.service",
    "kexec.service",
];

/// What, besides the shared inputs and the site the caller hands in (hashed
/// byte for byte by `ServiceSite::hash_into`), decides the debian image's
/// content.
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

fn write(path: PathBuf, data: impl AsRef<[u8]>, mode: u32) -> Result<(), GuestError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
    }
    fs::write(&path, data).map_err(|e| CacheError::io("write", &path, e))?;
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

/// Whether `site` can be installed beside the document set `docs`.
fn check_site(site: &ServiceSite, docs: &[(String, Vec<u8>)]) -> Result<(), GuestError> {
    const STEP: &str = "installing the site";
    site.check().map_err(|e| GuestError::build(Profile::Debian, STEP, e))?;
    if let Some(file) = site.files.iter().find(|f| docs.iter().any(|(url, _)| url.trim_start_matches('/') == f.path)) {
        let detail = format!("site file `{}` would replace a file of the document set", file.path);
        return Err(GuestError::build(Profile::Debian, STEP, detail));
    }
    Ok(())
}

/// Turns a fresh debootstrap tree into the kfi guest.
fn configure(root: &Path, docs: &[(String, Vec<u8>)], site: &ServiceSite) -> Result<(), GuestError> {
    write(root.join("etc/hostname"), "kfi-debian\n", 0o644)?;
    write(root.join("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 kfi-debian\n", 0o644)?;
    write(root.join("etc/fstab"), FSTAB, 0o644)?;
    fs::create_dir_all(root.join("data")).map_err(|e| CacheError::io("create", root.join("data"), e))?;
    write(root.join("usr/local/sbin/kfi-agent"), AGENT_SH, 0o755)?;
    write(root.join("etc/kfi/watched"), Profile::Debian.watched_list(), 0o644)?;
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
    write(root.join("etc/mysql/mariadb.conf.d/90-kfi.cnf"), MARIADB_CNF, 0o644)?;
    write(root.join("etc/systemd/system/mariadb.service.d/kfi.conf"), MARIADB_DROPIN, 0o644)?;
    for file in &site.files {
        write(root.join("var/www/html").join(&file.path), &file.data, file.mode)?;
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
    // The acknowledged writes on the data disk, readable over HTTP as on
    // the tiny guest (`/data/acked`), so a recovery or update can be
    // checked from outside (Apache follows symlinks under /var/www).
    fs::create_dir_all(www.join("data")).map_err(|e| CacheError::io("create", www.join("data"), e))?;
    symlink("/data/acked", www.join("data/acked"))?;
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

/// The uid and gid of `user` in the chroot's passwd.
fn chroot_ids(root: &Path, user: &str) -> Result<(u32, u32), GuestError> {
    let passwd = root.join("etc/passwd");
    let text = fs::read_to_string(&passwd).map_err(|e| CacheError::io("read", &passwd, e))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == user)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| {
            GuestError::build(
                Profile::Debian,
                "loading the site's database",
                format!("no `{user}` user in {}", passwd.display()),
            )
        })
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<(), GuestError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| CacheError::io("chown", path, e).into())
}

/// `chroot root` with an environment of its own: the host's (a `TMPDIR`
/// naming a host directory, say, which MariaDB then cannot create files
/// in) means nothing inside the image being built.
fn chroot_command(root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("chroot");
    cmd.arg(root)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Runs `args` inside the chroot at `root`, feeding it `stdin`; fails with
/// its output when it fails.
fn in_chroot(root: &Path, step: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), GuestError> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = chroot_command(root)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuestError::build(Profile::Debian, step, format!("cannot run chroot: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| GuestError::build(Profile::Debian, step, format!("writing to {}: {e}", args[0])))?;
    }
    let out = child.wait_with_output().map_err(|e| GuestError::build(Profile::Debian, step, e))?;
    if !out.status.success() {
        return Err(GuestError::build(
            Profile::Debian,
            step,
            format!(
                "`{}` in the chroot failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(())
}

/// A MariaDB server running in the build chroot; killed if the build
/// fails before it is shut down.
struct BuildServer(std::process::Child);

impl Drop for BuildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Creates the site's database at image build time, so no guest boot pays
/// for it: a private MariaDB server in the chroot (no network, its own
/// socket) initialises a datadir under the chroot's /data, loads schema
/// and data, and shuts down; the datadir then moves to `data`, the content
/// of the data disk.
fn load_database(root: &Path, data: &Path, database_sql: &str) -> Result<(), GuestError> {
    const STEP: &str = "loading the site's database";
    let started = std::time::Instant::now();
    let mysql = chroot_ids(root, "mysql")?;
    let datadir = root.join("data/mysql");
    fs::create_dir_all(&datadir).map_err(|e| CacheError::io("create", &datadir, e))?;
    chown(&datadir, mysql)?;
    let run = root.join("run/mysqld");
    fs::create_dir_all(&run).map_err(|e| CacheError::io("create", &run, e))?;
    chown(&run, mysql)?;
    in_chroot(
        root,
        STEP,
        &[
            "mariadb-install-db",
            "--user=mysql",
            "--datadir=/data/mysql",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        None,
    )?;
    let log = root.join("run/mysqld/kfi-build.log");
    let server = chroot_command(root)
        .args([
            "mariadbd",
            "--user=mysql",
            "--datadir=/data/mysql",
            "--skip-networking",
            &format!("--socket={BUILD_SOCKET}"),
            "--pid-file=/run/mysqld/kfi-build.pid",
            "--log-error=/run/mysqld/kfi-build.log",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| GuestError::build(Profile::Debian, STEP, format!("cannot start mariadbd in the chroot: {e}")))?;
    let mut server = BuildServer(server);
    let socket = root.join(BUILD_SOCKET.trim_start_matches('/'));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !socket.exists() {
        let exited = server.0.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() > deadline {
            return Err(GuestError::build(
                Profile::Debian,
                STEP,
                format!(
                    "mariadbd in the chroot {} before opening its socket; its log: {}",
                    if exited.is_some() { "exited" } else { "took over 120 s" },
                    fs::read_to_string(&log).unwrap_or_default()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A slow shutdown finishes the purge and the change-buffer merges the
    // load left behind. After a fast one the guest's server would do that
    // work in the background for minutes after every boot, writing the data
    // disk after each service snapshot and so invalidating it.
    let sql = format!("{database_sql}\nSET GLOBAL innodb_fast_shutdown = 0;\n");
    in_chroot(root, STEP, &["mariadb", &format!("--socket={BUILD_SOCKET}")], Some(&sql))?;
    in_chroot(root, STEP, &["mariadb-admin", &format!("--socket={BUILD_SOCKET}"), "shutdown"], None)?;
    let status = server.0.wait().map_err(|e| GuestError::build(Profile::Debian, STEP, e))?;
    if !status.success() {
        return Err(GuestError::build(Profile::Debian, STEP, format!("mariadbd shut down with {status}")));
    }
    let _ = fs::remove_file(&log);
    // The package's own datadir is never used: the configuration points at
    // /data/mysql. Emptying it keeps the root image small.
    let unused = root.join("var/lib/mysql");
    if let Ok(entries) = fs::read_dir(&unused) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    fs::create_dir_all(data).map_err(|e| CacheError::io("create", data, e))?;
    fs::rename(&datadir, data.join("mysql")).map_err(|e| CacheError::io("move", &datadir, e))?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), sql_bytes = sql.len(), "site database loaded");
    Ok(())
}

/// Builds the debian image. With `update_to`, the kernel to update to is
/// installed on the root disk the way its package would be (the locked
/// `.deb`'s files unpacked through the root's merged-/usr symlinks:
/// `/boot/vmlinuz-<release>`, `/lib/modules/<release>`;
/// no maintainer scripts, since the guest boots through QEMU's `-kernel` and
/// kfi's initramfs, which no bootloader or initramfs hook touches), and
/// kfi's initramfs carries both kernels' modules (also as
/// `/boot/initramfs-next.cpio`, what a kexec into the new kernel loads).
pub(crate) fn build(
    cache: &Cache,
    out: &Path,
    kernel: &Kernel,
    update_to: Option<&Kernel>,
    docs: &[(String, Vec<u8>)],
    site: &ServiceSite,
    progress: &dyn Fn(&str),
) -> Result<BuildSpec, GuestError> {
    // A bad path fails here, not after a minute of debootstrap.
    check_site(site, docs)?;
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
    // The userland comes from the mirror of the day and cannot be pinned:
    // what was installed is kept with the image, for every record's
    // provenance.
    let admindir = root.join("var/lib/dpkg");
    let packages = tools::DPKG_QUERY.run(
        ["--admindir".as_ref(), admindir.as_os_str(), "-W".as_ref(), "-f=${Package} ${Version}\n".as_ref()],
        None,
    )?;
    fs::write(out.join(super::PACKAGES_FILE), packages).map_err(|e| CacheError::io("write", out, e))?;
    progress("configuring the root filesystem");
    configure(&root, docs, site)?;
    let data = scratch.path().join("data");
    progress(&format!(
        "loading the site's database ({:.1} MB of SQL) into the data disk",
        site.database_sql.len() as f64 / 1e6
    ));
    load_database(&root, &data, &site.database_sql)?;
    // Built before the root disk, which carries it with the kernel for
    // kexec-reboot: the crash kernel boots the same way as the guest.
    progress("assembling the debian initramfs");
    let kernels: Vec<&Kernel> = std::iter::once(kernel).chain(update_to).collect();
    let mut initramfs = tiny::base_initramfs(Profile::Debian, &kernels)?;
    initramfs.file("init", INIT_SH.as_bytes().to_vec(), 0o755);
    initramfs.dir("newroot");
    let path = out.join("initramfs.cpio");
    initramfs.write_file(&path).map_err(|e| CacheError::io("write", &path, e))?;
    fs::create_dir_all(root.join("boot")).map_err(|e| CacheError::io("create", root.join("boot"), e))?;
    for (from, to) in [(kernel.vmlinuz.as_path(), "boot/vmlinuz"), (path.as_path(), "boot/initramfs.cpio")] {
        fs::copy(from, root.join(to)).map_err(|e| CacheError::io("copy", from, e))?;
    }
    let mut extra_files = vec![super::PACKAGES_FILE.to_string()];
    if let Some(next) = update_to {
        let locked = next.locked.as_ref().ok_or_else(|| {
            GuestError::build(
                Profile::Debian,
                "installing the kernel to update to",
                format!(
                    "{} is no locked Debian kernel; only a package can be installed in the debian image",
                    next.release
                ),
            )
        })?;
        let deb = crate::kernel::locked_deb(cache, locked, locked.image(), progress)?;
        progress(&format!("installing {} on the root disk", locked.image().apt_name()));
        // As dpkg unpacks it: through the root's merged-/usr symlinks (a
        // plain `dpkg-deb -x` would replace /lib by a directory of modules).
        let unpacked = duct::cmd(tools::DPKG_DEB.find()?, ["--fsys-tarfile".as_ref(), deb.as_os_str()])
            .pipe(duct::cmd(
                tools::TAR.find()?,
                ["-x".as_ref(), "--keep-directory-symlink".as_ref(), "-C".as_ref(), root.as_os_str()],
            ))
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|e| GuestError::build(Profile::Debian, "installing the kernel to update to", e))?;
        if !unpacked.status.success() {
            return Err(GuestError::build(
                Profile::Debian,
                "installing the kernel to update to",
                format!("unpacking {} failed: {}", deb.display(), String::from_utf8_lossy(&unpacked.stderr).trim()),
            ));
        }
        let next_initramfs = out.join(super::UPDATE_NEXT_INITRAMFS);
        fs::copy(&path, &next_initramfs).map_err(|e| CacheError::io("copy", &path, e))?;
        let in_root = root.join("boot").join(super::UPDATE_NEXT_INITRAMFS);
        fs::copy(&path, &in_root).map_err(|e| CacheError::io("copy", &path, e))?;
        extra_files.push(super::UPDATE_NEXT_INITRAMFS.to_string());
    }

    progress(&format!("making the {ROOTFS_MIB} MiB ext4 root disk"));
    super::make_ext4(&out.join("rootfs.img"), &root, "kfi-root", ROOTFS_MIB)?;
    progress("making the data disk");
    let marker = data.join("KFI-DATA-DISK");
    fs::write(&marker, DATA_DISK_MARKER).map_err(|e| CacheError::io("write", &marker, e))?;
    super::make_ext4(&out.join("data.img"), &data, "kfi-data", DATA_DISK_MIB)?;
    Ok(BuildSpec {
        cmdline: "net.ifnames=0".into(),
        rootfs: Some("rootfs.img".into()),
        min_memory_mib: MIN_MEMORY_MIB,
        extra_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::SiteFile;

    /// The units named on `key=` lines of a unit file.
    fn ordered(unit: &str, key: &str) -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect()
    }

    #[test]
    fn the_units_put_the_declared_phase_boundary_between_apache_and_the_data_disk() {
        // Profile::phase_boundary says Apache with PHP runs at the hold and
        // MariaDB starts after the data disk's mount: the units must agree.
        let boundary = Profile::Debian.phase_boundary();
        assert!(boundary.running.contains("Apache") && boundary.started_after.contains("MariaDB"));
        assert!(ordered(DATA_UNIT, "After").contains(&"apache2.service".to_string()), "{DATA_UNIT}");
        assert!(!ordered(DATA_UNIT, "Before").contains(&"apache2.service".to_string()), "{DATA_UNIT}");
        assert!(ordered(DATA_UNIT, "Before").contains(&"mariadb.service".to_string()), "{DATA_UNIT}");
        assert!(DATA_UNIT.contains("kfi.hold=userland") && DATA_UNIT.contains("kfi-agent hold"), "{DATA_UNIT}");
        for key in ["Requires", "After"] {
            assert!(ordered(MARIADB_DROPIN, key).contains(&"kfi-data.service".to_string()), "{MARIADB_DROPIN}");
        }
    }

    #[test]
    fn a_site_may_not_replace_the_document_set() {
        let docs = vec![("/index.html".to_string(), b"index".to_vec())];
        let file = |path: &str| SiteFile { path: path.into(), data: Vec::new(), mode: 0o644 };
        let site = ServiceSite { files: vec![file("shop/index.php")], database_sql: String::new() };
        assert!(check_site(&site, &docs).is_ok());
        let site = ServiceSite { files: vec![file("index.html")], database_sql: String::new() };
        let err = check_site(&site, &docs).unwrap_err().to_string();
        assert!(err.contains("document set"), "{err}");
    }
}
