//! The restore paths: a lazy restore maps a snapshot's RAM file
//! copy-on-write into a QEMU launched with `-incoming defer` (at once, or
//! ahead of need as a [`Standby`]), a streamed restore feeds a full
//! migration stream into anonymous RAM. Either way the guest's ports are
//! bound only once it runs ([`Vm::finish_incoming`]).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{io_err, Ram, Standby, Vm, VmConfig, VmError};
use crate::guest::GuestImage;
use crate::snapshot::Snapshot;

impl Vm {
    /// Starts QEMU from a snapshot: device state from its stream, RAM
    /// mapped copy-on-write from its RAM file. Returns once the guest runs.
    pub fn restore(image: &GuestImage, config: &VmConfig, snapshot: &Snapshot) -> Result<Vm, VmError> {
        Self::restore_on(Self::standby(image, config, snapshot)?)
    }

    /// [`Vm::restore`] leaving the service port closed (see
    /// [`Vm::restore_on_closed`]).
    pub fn restore_closed(image: &GuestImage, config: &VmConfig, snapshot: &Snapshot) -> Result<Vm, VmError> {
        Self::restore_on_closed(Self::standby(image, config, snapshot)?)
    }

    /// Launches the QEMU of a lazy restore of `snapshot` ahead of need:
    /// its RAM mapped from the snapshot, its disks opened but inactive (an
    /// incoming migration's disks take no write lock until the state is
    /// loaded, so the VM it will replace can keep running on them), its
    /// ports not yet bound. [`Vm::restore_on`] later finishes the restore
    /// without paying for QEMU's start.
    pub fn standby(image: &GuestImage, config: &VmConfig, snapshot: &Snapshot) -> Result<Standby, VmError> {
        Self::standby_on(image, config, snapshot, &Ram::Snapshot(&snapshot.ram_file()), &mut |_| Ok(()))
    }

    /// [`Vm::standby`] whose guest will own its RAM: the snapshot's RAM file
    /// is copied into the new QEMU's run directory now and mapped shared,
    /// so the restored guest can be snapshotted again ([`Vm::snapshottable`]).
    /// The copy costs the launch, not the restore.
    pub fn standby_owned(image: &GuestImage, config: &VmConfig, snapshot: &Snapshot) -> Result<Standby, VmError> {
        Self::standby_on(image, config, snapshot, &Ram::OwnedCopy(&snapshot.ram_file()), &mut |_| Ok(()))
    }

    /// [`Vm::standby`] with the RAM image from `ram` and `launched`
    /// called with the new QEMU before anything is loaded.
    fn standby_on(
        image: &GuestImage,
        config: &VmConfig,
        snapshot: &Snapshot,
        ram: &Ram<'_>,
        launched: &mut dyn FnMut(&Vm) -> Result<(), VmError>,
    ) -> Result<Standby, VmError> {
        let config = VmConfig { memory_mib: snapshot.meta.memory_mib, ..config.clone() };
        let mut vm = Self::launch(image, &config, ram)?;
        launched(&vm)?;
        vm.qmp.execute(
            "migrate-set-capabilities",
            Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )?;
        Ok(Standby { vm, snapshot: snapshot.clone() })
    }

    /// Loads the standby's snapshot and returns the running guest. The VM
    /// it replaces must be gone (its ports are bound now).
    pub fn restore_on(standby: Standby) -> Result<Vm, VmError> {
        let mut vm = Self::restore_on_closed(standby)?;
        vm.open_port()?;
        Ok(vm)
    }

    /// [`Vm::restore_on`] leaving the service port closed: the guest runs
    /// but clients are not forwarded until [`Vm::open_port`].
    pub fn restore_on_closed(standby: Standby) -> Result<Vm, VmError> {
        let Standby { mut vm, snapshot } = standby;
        vm.check_alive()?;
        let uri = format!("exec:cat {}", snapshot.state_file().display());
        vm.qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
        vm.finish_incoming(&snapshot.state_file())?;
        Ok(vm)
    }

    /// The lazy restore of [`Vm::restore`] with the RAM image read from
    /// `ram` (the snapshot's RAM file, or a block device holding it, e.g.
    /// a throttled loop device) and `launched` called with the new QEMU
    /// before anything is loaded (to put it in a cgroup, say).
    pub fn restore_lazy(
        image: &GuestImage,
        config: &VmConfig,
        snapshot: &Snapshot,
        ram: &Path,
        launched: &mut dyn FnMut(&Vm) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        Self::restore_on(Self::standby_on(image, config, snapshot, &Ram::Snapshot(ram), launched)?)
    }

    /// Starts QEMU from a full migration stream (device state *and* RAM,
    /// see [`super::save::take_stream`]) into anonymous RAM: the
    /// classic restore, whose time grows with what the stream holds. The
    /// stream is fed through a socket by a thread of this process at no
    /// more than `rate` bytes/s (`None`: as fast as it reads), so no helper
    /// process can outlive the restore. Returns once the guest runs.
    pub fn restore_streamed(
        image: &GuestImage,
        config: &VmConfig,
        stream: &Path,
        rate: Option<u64>,
        launched: &mut dyn FnMut(&Vm) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        let mut vm = Self::launch(image, config, &Ram::Incoming)?;
        launched(&vm)?;
        let socket = vm.run_dir().join("incoming.sock");
        let uri = format!("unix:{}", socket.display());
        vm.qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
        let file = stream.to_path_buf();
        let feeder = std::thread::Builder::new()
            .name("restore-feed".into())
            .spawn(move || crate::storage::feed(&file, &socket, rate))
            .map_err(io_err("start the thread feeding", stream))?;
        let loaded = vm.finish_incoming(stream).and_then(|()| vm.open_port());
        let fed = feeder.join().map_err(|_| VmError::Restore("the thread feeding the stream panicked".into()))?;
        loaded?;
        fed.map_err(io_err("feed the migration stream", stream))?;
        Ok(vm)
    }

    /// Waits until an incoming migration has loaded and the guest runs,
    /// then forwards the HTTP port.
    /// Forwards the service port to the guest (a restored guest's is not
    /// forwarded until it runs, and a recovery may hold it closed until
    /// the guest's services are ready).
    pub fn open_port(&mut self) -> Result<(), VmError> {
        self.port_forward("hostfwd_add")
    }

    /// Stops forwarding the service port: clients are refused by the host
    /// at once instead of queueing on a guest that cannot serve yet.
    pub fn close_port(&mut self) -> Result<(), VmError> {
        self.port_forward("hostfwd_remove")
    }

    fn port_forward(&mut self, command: &str) -> Result<(), VmError> {
        let line = if command == "hostfwd_add" {
            format!("{command} net0 tcp:127.0.0.1:{}-:80", self.http.port())
        } else {
            format!("{command} net0 tcp:127.0.0.1:{}", self.http.port())
        };
        let out = self.qmp.execute("human-monitor-command", Some(serde_json::json!({ "command-line": line })))?;
        match out.as_str().filter(|t| !t.trim().is_empty()) {
            // hostfwd_remove says "... removed", or "... not found" for a
            // forward that is not there (no failure either).
            Some(text) if command == "hostfwd_add" || !(text.contains("removed") || text.contains("not found")) => {
                Err(VmError::Restore(format!(
                    "cannot change the forward of port {} ({command}): {}",
                    self.http.port(),
                    text.trim()
                )))
            }
            _ => Ok(()),
        }
    }

    fn finish_incoming(&mut self, source: &Path) -> Result<(), VmError> {
        // The snapshot was saved from a paused guest, so the loaded guest
        // stays paused ("inmigrate" until the stream ends) until `cont`.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self.status()?.as_str() {
                "running" => {
                    // The service port is forwarded by the caller
                    // (`open_port`): QEMU's user networking accepts host
                    // connections as soon as a forward exists and then loses
                    // the guest-side SYN while the guest is still loading,
                    // leaving clients to a multi-second retransmit.
                    let gdb = format!("gdbserver {}", super::gdb_chardev(self.run_dir()));
                    let out =
                        self.qmp.execute("human-monitor-command", Some(serde_json::json!({ "command-line": gdb })))?;
                    let text = out.as_str().unwrap_or_default();
                    if !text.contains("Waiting for gdb connection") {
                        return Err(VmError::Restore(format!(
                            "cannot start the gdbstub on {}: {}",
                            self.gdb_socket().display(),
                            text.trim()
                        )));
                    }
                    return Ok(());
                }
                "paused" | "postmigrate" => {
                    self.cont()?;
                }
                "inmigrate" | "prelaunch" if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                other => {
                    return Err(VmError::Restore(format!(
                        "the VM is `{other}` instead of running after loading {}",
                        source.display()
                    )))
                }
            }
        }
    }
}
