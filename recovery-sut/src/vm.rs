//! One running guest: the QEMU process, its QMP session, its agent channel,
//! its console log and its forwarded ports.
//!
//! QEMU is started so that it cannot outlive its owner: it gets
//! `PR_SET_PDEATHSIG(SIGKILL)` (the kernel kills it when the thread that
//! spawned it dies, even by `kill -9`) and [`Vm`]'s `Drop` kills it on every
//! other path, panics included. Because the death signal follows the
//! spawning *thread*, start VMs from a thread that lives as long as they do.
//!
//! This module holds the QEMU process and its command line; the restore
//! paths (a lazy restore, on a standby or not, and a streamed one) are
//! `impl Vm` in `vm/restore.rs`, taking snapshots is [`save`]. The VM
//! layer sits above [`crate::accel`] (the plain accelerator names) and
//! [`crate::snapshot`] (a snapshot's files), and imports neither the KVM
//! probe ([`crate::accel_probe`]) nor the recovery loop, which use it.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accel::Accel;
use crate::agent::{AgentChannel, PhaseEvent};
use crate::guest::GuestImage;
use crate::ports::{self, PortInUse};
use crate::probe::{self, ProbeError};
use crate::qmp::{Qmp, QmpError, QmpEvent};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::tools::{self, ToolError};

mod restore;
pub mod save;

/// RAM the running kernel needs at least besides a crash kernel
/// reservation: the tiny guest's kexec initramfs carries the kernel and a
/// second initramfs (at 128 MiB it runs out of memory unpacking them). A
/// profile that needs more (its `min_memory_mib`) gets that.
pub const CRASH_KERNEL_HOST_MIB: u32 = 256;

/// How long QEMU gets to create its sockets before it counts as hung.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// How a VM is started.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Accelerator (decided beforehand, see [`crate::accel`]).
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Host port for the guest's port 80; `None` picks a free one.
    pub http_port: Option<u16>,
    /// Attach a copy-on-write overlay of the image's data disk.
    pub data_disk: bool,
    /// Agent heartbeat interval in seconds.
    pub heartbeat_s: u32,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// Keep the run directory (console log, QEMU output) after the VM ends.
    pub keep_run_dir: bool,
    /// Back guest RAM by a shared file in the run directory, so a snapshot
    /// can leave RAM out of the migration stream (`x-ignore-shared`) and a
    /// restore can map it lazily.
    pub shared_ram: bool,
    /// Where the disk overlays live; they are created there if missing and
    /// reused if present, so a restored VM sees the disk as the crashed one
    /// left it (the data disk is never rolled back). `None`: the run dir.
    pub disk_dir: Option<PathBuf>,
    /// Give the guest an i6300esb watchdog with this timeout in seconds,
    /// fed by the guest once its services run; QEMU then reports a guest
    /// that stops feeding it with a `WATCHDOG` event and leaves it running
    /// (the VMM decides what to do). `None`: no watchdog device.
    pub watchdog_s: Option<u32>,
    /// Reserve this much of the guest's RAM for a crash kernel
    /// (`crashkernel=`) and boot the image's kexec initramfs, whose init
    /// loads one there: a panic then reboots into it without firmware
    /// (kexec-reboot). `None`: no crash kernel.
    pub crash_kernel_mib: Option<u32>,
    /// A raw disk attached read-only with serial `kfi-fill`: the agent's
    /// `fill` command reads it, so the guest's page cache holds real,
    /// droppable file data (see [`crate::memory`]).
    pub fill_disk: Option<PathBuf>,
    /// Attach virtio-balloon with free-page reporting: the guest hands its
    /// free pages back and QEMU punches them out of the RAM file, so a
    /// snapshot holds only used pages.
    pub free_page_reporting: bool,
    /// Load a TCG plugin (`-plugin file=PATH,ARG...`): kfi's profiler for a
    /// golden-run profile. TCG only; `None` for every other VM.
    pub plugin: Option<Plugin>,
    /// Cut the guest off the network (`restrict=on`, no port forwarded):
    /// an update's shadow VM boots with the primary's devices but reaches
    /// nothing and is reached by nothing.
    pub isolated: bool,
}

/// A QEMU TCG plugin and its `name=value` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// The shared object.
    pub path: PathBuf,
    /// Its arguments, in order (QEMU splits the option at commas, so no
    /// value may hold one).
    pub args: Vec<(String, String)>,
}

impl Plugin {
    /// The `-plugin` option's value.
    fn option(&self) -> String {
        let mut opt = format!("file={}", self.path.display());
        for (name, value) in &self.args {
            opt.push_str(&format!(",{name}={value}"));
        }
        opt
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            http_port: None,
            data_disk: false,
            heartbeat_s: 1,
            extra_cmdline: Vec::new(),
            keep_run_dir: false,
            shared_ram: false,
            disk_dir: None,
            watchdog_s: None,
            crash_kernel_mib: None,
            fill_disk: None,
            free_page_reporting: false,
            plugin: None,
            isolated: false,
        }
    }
}

/// Errors starting or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A host program is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A requested port is taken.
    #[error(transparent)]
    PortInUse(#[from] PortInUse),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU exited when it should be running.
    #[error("QEMU exited {when} ({status}); its last words: {stderr}")]
    Exited {
        /// When it was noticed.
        when: &'static str,
        /// Exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A phase did not arrive in time.
    #[error("the guest did not reach phase `{phase}` within {timeout:?} (phases so far: {seen}); see the console log {console}")]
    PhaseTimeout {
        /// Phase waited for.
        phase: String,
        /// Timeout.
        timeout: Duration,
        /// Phases that did arrive.
        seen: String,
        /// Console log path.
        console: PathBuf,
    },
    /// The service never answered correctly.
    #[error("no correct HTTP answer within {timeout:?}: last attempt: {last}; see the console log {console}")]
    HttpTimeout {
        /// Timeout.
        timeout: Duration,
        /// The last probe's failure.
        last: ProbeError,
        /// Console log path.
        console: PathBuf,
    },
    /// A snapshot could not be loaded.
    #[error("restoring the snapshot failed: {0}")]
    Restore(String),
    /// Taking a snapshot failed, or its files did.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A crash kernel was asked for where the image has none.
    #[error("the {profile} guest image has no crash kernel to load; build the image again (`kfi guest build {profile}`) with this version of kfi")]
    NoCrashKernel {
        /// Profile.
        profile: String,
    },
    /// The crash kernel reservation leaves the running kernel too little.
    #[error("a {crash} MiB crash kernel reservation leaves too little of {asked} MiB guest RAM for the running system: give the guest at least {need} MiB")]
    CrashKernelMemory {
        /// The reservation.
        crash: u32,
        /// Guest RAM asked for.
        asked: u32,
        /// Guest RAM needed.
        need: u32,
    },
    /// Not enough RAM for the profile.
    #[error("the {profile} guest needs at least {min} MiB of RAM, {asked} MiB were asked for")]
    TooLittleMemory {
        /// Profile.
        profile: String,
        /// Minimum.
        min: u32,
        /// Asked.
        asked: u32,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io { action, path: path.to_path_buf(), source }
}

/// A summary of one boot, as `kfi boot --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Guest profile.
    pub profile: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Guest kernel release.
    pub kernel_version: String,
    /// Where the kernel came from.
    pub kernel: String,
    /// Guest RAM.
    pub memory_mib: u32,
    /// Phase name -> seconds since QEMU started.
    pub phases: std::collections::BTreeMap<String, f64>,
    /// Seconds from QEMU start to the first correct HTTP answer.
    pub http_ready_s: Option<f64>,
}

/// A QEMU launched for a restore before it is needed ([`Vm::standby`]).
/// Dropping it stops the process.
pub struct Standby {
    vm: Vm,
    snapshot: Snapshot,
}

impl Standby {
    /// The snapshot it will load.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Vm {
    child: duct::Handle,
    qmp: Qmp,
    agent: AgentChannel,
    run_dir: Option<tempfile::TempDir>,
    kept_dir: Option<PathBuf>,
    started: Instant,
    http: SocketAddr,
    accel: Accel,
    memory_mib: u32,
    image: GuestImage,
    config: VmConfig,
    /// RAM is the run directory's shared file (not a snapshot's private map).
    snapshottable: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("pid", &self.pid()).field("http", &self.http).finish()
    }
}

struct Ports {
    http: u16,
    chosen: bool,
}

/// The ports of a new QEMU. A given port is checked only when QEMU binds
/// it at launch (`check`): a restore binds its ports once the guest is
/// loaded, by which time the VM it replaces, which holds them now, is gone.
fn pick_ports(config: &VmConfig, check: bool) -> Result<Ports, VmError> {
    let pick = |want: Option<u16>, purpose| -> Result<u16, VmError> {
        match want {
            Some(port) => {
                if check {
                    ports::check_free(port, purpose)?;
                }
                Ok(port)
            }
            None => ports::free_port().map_err(io_err("bind a free port on", Path::new("127.0.0.1"))),
        }
    };
    Ok(Ports { http: pick(config.http_port, "HTTP forward")?, chosen: config.http_port.is_none() })
}

/// The gdbstub's socket in a run directory.
const GDB_SOCKET: &str = "gdb.sock";

/// The chardev the gdbstub listens on, for `-gdb` and HMP `gdbserver`.
fn gdb_chardev(run_dir: &Path) -> String {
    format!("unix:{},server=on,wait=off", run_dir.join(GDB_SOCKET).display())
}

fn hostfwd(port: u16) -> String {
    format!("hostfwd=tcp:127.0.0.1:{port}-:80")
}

impl Ram<'_> {
    /// Launched to load a snapshot: the guest runs, and its ports are
    /// bound, only once the state is in.
    fn is_incoming(&self) -> bool {
        matches!(self, Ram::Snapshot(_) | Ram::OwnedCopy(_) | Ram::Incoming)
    }
}

/// Where guest RAM comes from.
enum Ram<'a> {
    /// Anonymous memory.
    Anonymous,
    /// A shared file in the run directory (snapshottable).
    SharedFile,
    /// A snapshot's RAM file, mapped copy-on-write so it loads lazily and
    /// stays reusable.
    Snapshot(&'a Path),
    /// A copy of a snapshot's RAM file in the run directory, made before
    /// QEMU starts and mapped shared: the restored guest owns its RAM, so
    /// it can be snapshotted again (the copy costs the launch, which a
    /// standby pays ahead of need).
    OwnedCopy(&'a Path),
    /// Anonymous memory under the snapshot's backend name, filled by an
    /// incoming migration stream that carries the RAM.
    Incoming,
}

fn qemu_args(
    image: &GuestImage,
    config: &VmConfig,
    dir: &Path,
    disk_dir: &Path,
    ports: &Ports,
    ram: &Ram,
) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut cmdline = vec!["console=ttyS0".to_string(), "nokaslr".into(), format!("kfi.hb={}", config.heartbeat_s)];
    if let Some(timeout) = config.watchdog_s {
        // The tiny init feeds it with busybox `watchdog`; systemd (debian)
        // with its runtime watchdog.
        cmdline.push(format!("kfi.watchdog={timeout}"));
        cmdline.push(format!("systemd.watchdog_sec={timeout}"));
    }
    if let Some(mib) = config.crash_kernel_mib {
        // pvpanic is a panic notifier: run the notifiers before the jump,
        // so the VMM hears of the panic at once (with a crash kernel
        // loaded pvpanic reports GUEST_CRASHLOADED, on which QEMU does not
        // pause the guest).
        cmdline.extend([format!("crashkernel={mib}M"), "crash_kexec_post_notifiers".into(), "kfi.kexec=load".into()]);
    }
    cmdline.extend(image.meta.cmdline.split_whitespace().map(str::to_string));
    cmdline.extend(config.extra_cmdline.iter().cloned());
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("kfi-{}", image.profile()),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-machine".into(),
        match ram {
            Ram::Anonymous => "pc".into(),
            Ram::SharedFile | Ram::Snapshot(_) | Ram::OwnedCopy(_) | Ram::Incoming => {
                "pc,memory-backend=pc.ram".to_string()
            }
        },
        "-accel".into(),
        config.accel.name().into(),
        "-cpu".into(),
        config.accel.cpu_model().into(),
        "-m".into(),
        config.memory_mib.to_string(),
        "-smp".into(),
        config.cpus.to_string(),
        "-kernel".into(),
        image.kernel.boot_image.display().to_string(),
        "-initrd".into(),
        match (config.crash_kernel_mib, image.kexec_initramfs()) {
            (Some(_), Some(kexec)) => kexec.display().to_string(),
            _ => image.initramfs().display().to_string(),
        },
        "-append".into(),
        cmdline.join(" "),
        "-serial".into(),
        format!("file:{}", p("console.log")),
        "-chardev".into(),
        format!("socket,id=qmp,path={},server=on,wait=off", p("qmp.sock")),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={},server=on,wait=off", p("agent.sock")),
        "-device".into(),
        "virtserialport,bus=vser0.0,chardev=agent,name=org.kfi.agent".into(),
        "-netdev".into(),
        match ram {
            _ if config.isolated => "user,id=net0,restrict=on".to_string(),
            // Forwarded only once the restored guest runs (see Vm::restore).
            Ram::Snapshot(_) | Ram::OwnedCopy(_) | Ram::Incoming => "user,id=net0".to_string(),
            _ => format!("user,id=net0,{}", hostfwd(ports.http)),
        },
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
        "-device".into(),
        "pvpanic".into(),
        "-action".into(),
        "panic=pause".into(),
        "-pidfile".into(),
        p("qemu.pid"),
    ];
    if !ram.is_incoming() {
        // A restore starts its gdbstub once the guest is loaded (see
        // `finish_incoming`).
        args.extend(["-gdb".into(), gdb_chardev(dir)]);
    }
    if let Some(plugin) = &config.plugin {
        args.extend(["-plugin".into(), plugin.option()]);
    }
    if config.watchdog_s.is_some() {
        args.extend(["-device".into(), "i6300esb".into(), "-action".into(), "watchdog=none".into()]);
    }
    match ram {
        Ram::Anonymous => {}
        Ram::SharedFile => {
            args.push("-object".into());
            args.push(format!(
                "memory-backend-file,id=pc.ram,size={}M,mem-path={},share=on",
                config.memory_mib,
                p("guest.ram")
            ));
        }
        Ram::Snapshot(file) => {
            args.push("-object".into());
            args.push(format!(
                "memory-backend-file,id=pc.ram,size={}M,mem-path={},share=off",
                config.memory_mib,
                file.display()
            ));
            args.push("-incoming".into());
            args.push("defer".into());
        }
        Ram::OwnedCopy(_) => {
            args.push("-object".into());
            args.push(format!(
                "memory-backend-file,id=pc.ram,size={}M,mem-path={},share=on",
                config.memory_mib,
                p("guest.ram")
            ));
            args.push("-incoming".into());
            args.push("defer".into());
        }
        Ram::Incoming => {
            // Same backend id as the saving side's file: migration matches
            // RAM blocks by name.
            args.push("-object".into());
            args.push(format!("memory-backend-ram,id=pc.ram,size={}M", config.memory_mib));
            args.push("-incoming".into());
            args.push("defer".into());
        }
    }
    let d = |name: &str| disk_dir.join(name).display().to_string();
    let mut disk = |id: &str, file: String| {
        args.push("-drive".into());
        args.push(format!("if=none,id={id},file={file},format=qcow2,cache=unsafe"));
        args.push("-device".into());
        args.push(format!("virtio-blk-pci,drive={id},serial=kfi-{id}"));
    };
    if image.rootfs().is_some() {
        disk("root", d("root.qcow2"));
    }
    if config.data_disk || image.rootfs().is_some() {
        disk("data", d("data.qcow2"));
    }
    // After every other device, so the guest's existing PCI slots (and
    // its /dev/vda) stay where they were without these.
    if let Some(fill) = &config.fill_disk {
        args.push("-drive".into());
        args.push(format!("if=none,id=fill,file={},format=raw,readonly=on", fill.display()));
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=fill,serial=kfi-fill".into());
    }
    if config.free_page_reporting {
        args.push("-device".into());
        args.push("virtio-balloon-pci,id=balloon0,free-page-reporting=on".into());
    }
    args
}

fn overlay(base: &Path, overlay: &Path) -> Result<(), ToolError> {
    if overlay.exists() {
        return Ok(());
    }
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    create_overlay(&base, "raw", overlay)
}

/// Makes `overlay`, a qcow2 copy-on-write overlay of `base` (whose format
/// is `base_format`).
pub(crate) fn create_overlay(base: &Path, base_format: &str, overlay: &Path) -> Result<(), ToolError> {
    tools::QEMU_IMG
        .run(
            [
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                base_format.as_ref(),
                "-b".as_ref(),
                base.as_os_str(),
                overlay.as_os_str(),
            ],
            None,
        )
        .map(drop)
}

/// Configures the child QEMU so it dies with this thread, in its own
/// process group (a terminal's Ctrl-C goes to kfi, which then shuts the
/// guest down in order).
fn die_with_parent(cmd: &mut std::process::Command) -> std::io::Result<()> {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid, setpgid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The owner may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("owner exited before QEMU started"));
            }
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    Ok(())
}

fn is_bind_failure(stderr: &str) -> bool {
    stderr.contains("host forwarding rule")
        || stderr.contains("Address already in use")
        || stderr.contains("Failed to bind")
}

impl Vm {
    /// Starts a guest and connects QMP and the agent channel. Returns once
    /// QEMU runs; use [`Vm::wait_phase`] and [`Vm::wait_http`] for the boot.
    pub fn start(image: &GuestImage, config: &VmConfig) -> Result<Vm, VmError> {
        let ram = if config.shared_ram { Ram::SharedFile } else { Ram::Anonymous };
        Self::launch(image, config, &ram)
    }

    fn launch(image: &GuestImage, config: &VmConfig, ram: &Ram) -> Result<Vm, VmError> {
        if let Some(crash) = config.crash_kernel_mib {
            if !image.can_kexec() {
                return Err(VmError::NoCrashKernel { profile: image.profile().to_string() });
            }
            let need = crash + CRASH_KERNEL_HOST_MIB.max(image.meta.min_memory_mib);
            if config.memory_mib < need {
                return Err(VmError::CrashKernelMemory { crash, asked: config.memory_mib, need });
            }
        }
        if config.memory_mib < image.meta.min_memory_mib {
            return Err(VmError::TooLittleMemory {
                profile: image.profile().to_string(),
                min: image.meta.min_memory_mib,
                asked: config.memory_mib,
            });
        }
        let qemu = tools::QEMU.find()?;
        // Auto-picked ports can be taken between the check and QEMU's bind.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ports = pick_ports(config, !ram.is_incoming())?;
            match Self::start_once(&qemu, image, config, &ports, ram) {
                Err(VmError::Exited { stderr, .. }) if ports.chosen && attempts < 4 && is_bind_failure(&stderr) => {
                    tracing::debug!(%stderr, "port race, retrying with new ports");
                }
                other => return other,
            }
        }
    }

    fn start_once(qemu: &Path, image: &GuestImage, config: &VmConfig, ports: &Ports, ram: &Ram) -> Result<Vm, VmError> {
        let run_dir =
            crate::private::tempdir("kfi-vm-").map_err(io_err("create a run directory in", &std::env::temp_dir()))?;
        let dir = run_dir.path().to_path_buf();
        let disk_dir = config.disk_dir.clone().unwrap_or_else(|| dir.clone());
        if let Some(root) = image.rootfs() {
            overlay(&root, &disk_dir.join("root.qcow2"))?;
        }
        if config.data_disk || image.rootfs().is_some() {
            overlay(&image.data_template(), &disk_dir.join("data.qcow2"))?;
        }
        if let Ram::OwnedCopy(file) = ram {
            let target = dir.join("guest.ram");
            crate::snapshot::copy_sparse(file, &target).map_err(io_err("copy the snapshot's RAM to", &target))?;
        }
        let args = qemu_args(image, config, &dir, &disk_dir, ports, ram);
        std::fs::write(dir.join("qemu.cmdline"), format!("{} {}\n", qemu.display(), args.join(" ")))
            .map_err(io_err("write", &dir))?;
        let started = Instant::now();
        let child = duct::cmd(qemu, &args)
            .stdin_null()
            .stdout_path(dir.join("qemu.stdout"))
            .stderr_path(dir.join("qemu.stderr"))
            .unchecked()
            .before_spawn(die_with_parent)
            .start()
            .map_err(|source| ToolError::Spawn { command: qemu.display().to_string(), source })?;

        // From here on, dropping `child` without kill would leak QEMU:
        // wrap it first so every error path below kills it.
        let mut guard = ChildGuard(Some(child));
        let exited = |guard: &mut ChildGuard, when: &'static str| -> Option<VmError> {
            let out = guard.0.as_ref()?.try_wait().ok()??;
            Some(VmError::Exited { when, status: out.status.to_string(), stderr: read_tail(&dir.join("qemu.stderr")) })
        };
        let deadline = started + SOCKET_TIMEOUT;
        let qmp = loop {
            if let Some(e) = exited(&mut guard, "at once") {
                return Err(e);
            }
            if dir.join("qmp.sock").exists() && dir.join("agent.sock").exists() {
                match Qmp::connect(&dir.join("qmp.sock")) {
                    Ok(q) => break q,
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err(VmError::Exited {
                    when: "hung before opening its sockets",
                    status: "killed".into(),
                    stderr: read_tail(&dir.join("qemu.stderr")),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let agent = AgentChannel::connect(&dir.join("agent.sock"), started)
            .map_err(io_err("connect to", &dir.join("agent.sock")))?;
        let (run_dir, kept_dir) = if config.keep_run_dir {
            // Kept on purpose: no owner, so no later sweep removes it.
            crate::private::disown(run_dir.path());
            (None, Some(run_dir.keep()))
        } else {
            (Some(run_dir), None)
        };
        Ok(Vm {
            child: guard.0.take().expect("child present"),
            qmp,
            agent,
            run_dir,
            kept_dir,
            started,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, ports.http)),
            accel: config.accel,
            memory_mib: config.memory_mib,
            image: image.clone(),
            config: config.clone(),
            snapshottable: matches!(ram, Ram::SharedFile | Ram::OwnedCopy(_)),
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.pids().first().copied().unwrap_or(0)
    }

    /// The run directory (console log, QEMU's output, sockets).
    pub fn run_dir(&self) -> &Path {
        self.run_dir.as_ref().map(|d| d.path()).or(self.kept_dir.as_deref()).expect("a run dir")
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir().join("console.log")
    }

    /// The last lines of the guest's console, for an error message.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read(self.console_log()).unwrap_or_default();
        last_console_lines(&String::from_utf8_lossy(&text))
    }

    /// Host address forwarded to the guest's port 80.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The gdbstub's unix socket, in the private run directory: a TCP
    /// stub would let any local process that connects (a port scan is
    /// enough) halt the guest, a recovery included.
    pub fn gdb_socket(&self) -> PathBuf {
        self.run_dir().join(GDB_SOCKET)
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The configuration it was started with (ports as actually used).
    pub fn config(&self) -> VmConfig {
        VmConfig { http_port: Some(self.http.port()), ..self.config.clone() }
    }

    /// Whether [`save::take`] can snapshot it: its RAM is a
    /// shared file of its own. A restored VM maps a snapshot's RAM
    /// privately and cannot.
    pub fn snapshottable(&self) -> bool {
        self.snapshottable
    }

    /// Says that the guest now runs `image`'s kernel, after a kexec into
    /// it in this QEMU: snapshots record it. QEMU's own `-kernel` stays the
    /// one it started with, so a reset would boot that one again.
    pub fn now_runs(&mut self, image: &GuestImage) {
        self.image = image.clone();
    }

    /// The image it booted (or, after [`Vm::now_runs`], runs).
    pub fn image(&self) -> &GuestImage {
        &self.image
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The agent channel.
    pub fn agent(&self) -> &AgentChannel {
        &self.agent
    }

    /// QEMU's version, from the QMP greeting.
    pub fn qmp_version(&self) -> String {
        self.qmp.qemu_version().to_string()
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// `Err` if QEMU has exited.
    pub fn check_alive(&self) -> Result<(), VmError> {
        match self.child.try_wait() {
            Ok(Some(out)) => Err(VmError::Exited {
                when: "unexpectedly",
                status: out.status.to_string(),
                stderr: read_tail(&self.run_dir().join("qemu.stderr")),
            }),
            _ => Ok(()),
        }
    }

    /// When (host clock) the agent reported `phase`, if it has since QEMU
    /// started or the agent was last reset (a reboot, a restore).
    pub fn phase_instant(&self, phase: &str) -> Option<Instant> {
        let event = self.agent.phases().into_iter().find(|p| p.name == phase)?;
        Some(self.started + Duration::from_secs_f64(event.at_s))
    }

    /// Waits for the agent to report a phase.
    pub fn wait_phase(&self, phase: &str, timeout: Duration) -> Result<PhaseEvent, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(250));
            if let Some(event) = self.agent.wait_phase(phase, slice) {
                return Ok(event);
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                let seen = self.agent.phases().iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(VmError::PhaseTimeout {
                    phase: phase.into(),
                    timeout,
                    seen: if seen.is_empty() { "none".into() } else { seen },
                    console: self.console_log(),
                });
            }
        }
    }

    /// Waits for the first correct answer for the index page; returns the
    /// time since QEMU started.
    pub fn wait_http(&self, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        match probe::wait_correct(self.http, self.image.docs.index(), deadline, || self.check_alive().is_ok()) {
            Ok(at) => Ok(at - self.started),
            Err(last) => {
                self.check_alive()?;
                Err(VmError::HttpTimeout { timeout, last, console: self.console_log() })
            }
        }
    }

    /// Pauses the guest's CPUs.
    pub fn stop(&mut self) -> Result<(), VmError> {
        self.qmp.execute("stop", None)?;
        Ok(())
    }

    /// Resumes the guest's CPUs.
    pub fn cont(&mut self) -> Result<(), VmError> {
        self.qmp.execute("cont", None)?;
        Ok(())
    }

    /// QEMU's run state (`running`, `paused`, `guest-panicked`, ...).
    pub fn status(&mut self) -> Result<String, VmError> {
        let status = self.qmp.execute("query-status", None)?;
        Ok(status.get("status").and_then(|s| s.as_str()).unwrap_or("unknown").to_string())
    }

    /// QMP events received and not yet taken.
    pub fn events(&self) -> Vec<QmpEvent> {
        self.qmp.drain_events()
    }

    /// The boot summary so far.
    pub fn report(&self, http_ready: Option<Duration>) -> BootReport {
        BootReport {
            profile: self.image.profile().to_string(),
            accel: self.accel.name().into(),
            qemu_version: self.qmp.qemu_version().into(),
            kernel_version: self.image.kernel.release.clone(),
            kernel: self.image.kernel.describe(),
            memory_mib: self.memory_mib,
            phases: self.agent.phases().into_iter().map(|p| (p.name, round_ms(p.at_s))).collect(),
            http_ready_s: http_ready.map(|d| round_ms(d.as_secs_f64())),
        }
    }

    /// Asks the guest to power off (ACPI), then QEMU to quit, then kills it.
    /// Returns how it ended.
    pub fn shutdown(mut self, grace: Duration) -> Shutdown {
        if self.child.try_wait().ok().flatten().is_some() {
            return Shutdown::AlreadyExited;
        }
        // The tiny guest has no ACPI daemon: the power button does nothing.
        let acpi = self.image.profile() != crate::guest::Profile::Tiny;
        if acpi
            && self.qmp.execute_timeout("system_powerdown", None, Duration::from_secs(2)).is_ok()
            && self.wait_exit(grace)
        {
            return Shutdown::PoweredOff;
        }
        // `quit` flushes disk caches and exits cleanly even when the guest
        // ignores the power button (the tiny guest has no ACPI daemon).
        let _ = self.qmp.execute_timeout("quit", None, Duration::from_secs(2));
        if self.wait_exit(Duration::from_secs(5)) {
            return Shutdown::Quit;
        }
        kill_and_reap(&self.child);
        Shutdown::Killed
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills QEMU at once (what a host crash would do).
    pub fn kill(self) {
        kill_and_reap(&self.child);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}

/// How [`Vm::shutdown`] ended the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shutdown {
    /// The guest powered off by itself.
    PoweredOff,
    /// QEMU quit on request.
    Quit,
    /// QEMU had to be killed.
    Killed,
    /// It had already exited.
    AlreadyExited,
}

struct ChildGuard(Option<duct::Handle>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            kill_and_reap(&child);
        }
    }
}

/// SIGKILL, then wait, so that QEMU's ports and files are released when
/// this returns (duct's `kill` alone does not wait).
fn kill_and_reap(child: &duct::Handle) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| tools::tail(&b, 1500)).unwrap_or_default();
    if text.is_empty() {
        "(nothing on stderr)".into()
    } else {
        text
    }
}

/// The last six non-empty lines of a console, joined, without the
/// terminal's escape sequences (systemd colours its console and redraws
/// its progress lines).
fn last_console_lines(text: &str) -> String {
    let text = console::strip_ansi_codes(text);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(6).collect();
    if lines.is_empty() {
        return "(nothing)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// Used by [`crate::accel_probe`] to say which QEMU binary runs.
pub fn qemu_version() -> Result<String, ToolError> {
    let out = tools::QEMU.run(["--version"], None)?;
    let first = out.lines().next().unwrap_or_default();
    Ok(first.trim_start_matches("QEMU emulator version ").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tails_leave_out_terminal_codes_and_empty_lines() {
        let line = "\u{1b}M\u{1b}[K[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39mmariadb.service\u{1b}[0m.";
        assert_eq!(last_console_lines(line), "[  OK  ] Started mariadb.service.");
        assert_eq!(last_console_lines("plain"), "plain");
        assert_eq!(last_console_lines("cut \u{1b}[0;3"), "cut");
        assert_eq!(last_console_lines("1\n2\n\n3\n4\n5\n6\n7\n"), "2 | 3 | 4 | 5 | 6 | 7");
        assert_eq!(last_console_lines(""), "(nothing)");
    }
}
