//! Tests against the real tiny guest under QEMU: boot to a correct HTTP
//! answer, phases in order, heartbeats, stop/cont, GUEST_PANICKED, and
//! what happens on bad input.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::time::Duration;

use recovery_sut::probe;
use recovery_sut::{Accel, Vm, VmConfig, VmError};
use support::{process_running, tiny_image, wait_until};

const BOOT: Duration = Duration::from_secs(90);

fn tcg() -> VmConfig {
    VmConfig { accel: Accel::Tcg, ..VmConfig::default() }
}

#[test]
fn tiny_guest_boots_to_correct_http_with_phases_in_order() {
    let image = tiny_image();
    let vm = Vm::start(&image, &VmConfig { data_disk: true, ..tcg() }).expect("start");
    let ready = vm.wait_http(BOOT).expect("correct HTTP answer");
    vm.wait_phase("services-ready", Duration::from_secs(10)).expect("services-ready");

    let phases = vm.agent().phases();
    let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["kernel", "userland", "data-mounted", "services-ready"]);
    assert!(phases.windows(2).all(|w| w[0].at_s <= w[1].at_s), "phase times not monotonic: {phases:?}");
    assert!(phases.windows(2).all(|w| w[0].guest_uptime_s <= w[1].guest_uptime_s));
    assert!(phases[0].at_s > 0.0 && phases[3].at_s <= ready.as_secs_f64() + 1.0);

    // Every document, not only the index, comes back byte-exact.
    for doc in image.docs.docs.iter().step_by(25) {
        probe::check_doc(vm.http_addr(), doc, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{}: {e}", doc.path));
    }
    let report = vm.report(Some(ready));
    assert_eq!(report.accel, "tcg");
    assert!(report.qemu_version.starts_with(char::is_numeric), "{}", report.qemu_version);
    assert_eq!(report.kernel_version, image.kernel.release);

    // Nothing another local user can reach stops the guest: its directory
    // is private, and a client on every TCP port QEMU listens on (only the
    // HTTP forward; the gdbstub is a unix socket in that directory) that
    // sends the gdb interrupt and a query leaves it serving.
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mode = std::fs::metadata(vm.run_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "run directory mode {mode:o}");
    assert!(std::fs::metadata(vm.gdb_socket()).unwrap().file_type().is_socket());
    let listeners = support::tcp_listeners(vm.pid());
    assert_eq!(listeners.iter().map(|a| a.port()).collect::<Vec<_>>(), [vm.http_addr().port()], "{listeners:?}");
    let held: Vec<std::net::TcpStream> = listeners
        .iter()
        .filter_map(|addr| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
            s.write_all(b"\x03$?#3f").ok()?;
            Some(s)
        })
        .collect();
    let seq = vm.agent().last_heartbeat().map_or(0, |h| h.seq);
    assert!(vm.agent().wait_heartbeat(seq + 2, Duration::from_secs(10)).is_some(), "heartbeats stopped");
    probe::check_doc(vm.http_addr(), &image.docs.docs[0], Duration::from_secs(10)).expect("still serving");
    drop(held);
}

#[test]
fn heartbeats_stop_while_paused_and_resume_after_cont() {
    let image = tiny_image();
    let mut vm = Vm::start(&image, &tcg()).expect("start");
    vm.wait_phase("services-ready", BOOT).expect("boot");
    let first = vm.agent().wait_heartbeat(0, Duration::from_secs(10)).expect("a heartbeat");

    vm.stop().expect("stop");
    assert_eq!(vm.status().unwrap(), "paused");
    let paused_at = vm.agent().last_heartbeat().unwrap().seq;
    std::thread::sleep(Duration::from_millis(2500));
    assert!(vm.agent().last_heartbeat().unwrap().seq <= paused_at + 1, "heartbeats went on while paused");

    vm.cont().expect("cont");
    assert_eq!(vm.status().unwrap(), "running");
    let later = vm.agent().wait_heartbeat(paused_at + 1, Duration::from_secs(10)).expect("heartbeat after cont");
    assert!(later.seq > first.seq);
}

#[test]
fn guest_panic_pauses_the_vm_and_raises_guest_panicked() {
    let image = tiny_image();
    // An NMI with unknown_nmi_panic set is a real kernel panic, raised from
    // outside without any guest-side helper.
    let config = VmConfig { extra_cmdline: vec!["unknown_nmi_panic".into()], ..tcg() };
    let mut vm = Vm::start(&image, &config).expect("start");
    vm.wait_phase("services-ready", BOOT).expect("boot");
    vm.qmp().execute("inject-nmi", None).expect("inject-nmi");
    let event = vm.qmp().wait_event("GUEST_PANICKED", Duration::from_secs(20)).expect("GUEST_PANICKED event");
    assert_eq!(event.data["action"], "pause");
    assert_eq!(vm.status().unwrap(), "guest-panicked");
    // pvpanic fires from the panic notifiers, before the console is flushed:
    // resuming lets the kernel finish writing its panic report.
    vm.cont().expect("cont");
    let log = vm.console_log();
    let has_panic = || std::fs::read_to_string(&log).unwrap_or_default().contains("Kernel panic - not syncing");
    assert!(wait_until(Duration::from_secs(10), has_panic), "console log has no panic message");
}

#[test]
fn dropping_the_vm_kills_qemu() {
    let image = tiny_image();
    let vm = Vm::start(&image, &tcg()).expect("start");
    let pid = vm.pid();
    assert!(process_running(pid));
    drop(vm);
    assert!(wait_until(Duration::from_secs(5), || !process_running(pid)), "QEMU {pid} survived its Vm");
}

#[test]
fn a_panicking_owner_leaves_no_qemu() {
    let image = tiny_image();
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = std::thread::spawn(move || {
        let vm = Vm::start(&image, &tcg()).expect("start");
        tx.send(vm.pid()).unwrap();
        panic!("owner dies with a running VM");
    });
    let pid = rx.recv().unwrap();
    assert!(owner.join().is_err());
    assert!(wait_until(Duration::from_secs(5), || !process_running(pid)), "QEMU {pid} survived a panic");
}

#[test]
fn qemu_that_exits_at_once_is_reported_with_its_words() {
    let image = tiny_image();
    // More RAM than any host has: QEMU refuses at start-up.
    let err = Vm::start(&image, &VmConfig { memory_mib: 64 << 20, ..tcg() }).unwrap_err();
    match &err {
        VmError::Exited { when, stderr, .. } => {
            assert_eq!(*when, "at once");
            assert!(stderr.contains("memory"), "{stderr}");
        }
        other => panic!("expected Exited, got {other}"),
    }
}

#[test]
fn occupied_port_is_named_before_qemu_starts() {
    let image = tiny_image();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let err = Vm::start(&image, &VmConfig { http_port: Some(port), ..tcg() }).unwrap_err();
    assert!(matches!(err, VmError::PortInUse(_)), "{err}");
    assert!(err.to_string().contains(&port.to_string()));
}

#[test]
fn too_little_memory_is_refused() {
    let image = tiny_image();
    let err = Vm::start(&image, &VmConfig { memory_mib: 16, ..tcg() }).unwrap_err();
    assert!(err.to_string().contains("at least"), "{err}");
}

#[test]
fn service_snapshot_restores_the_service_and_is_reusable() {
    use recovery_sut::snapshot::Snapshot;
    use recovery_sut::vm::save;
    use std::time::Instant;
    let image = tiny_image();
    let store = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(&image, &VmConfig { shared_ram: true, ..tcg() }).expect("start");
    vm.wait_http(BOOT).expect("boot");
    let snap = save::take(&mut vm, &store.path().join("svc"), "services-ready").expect("snapshot");
    assert!(snap.meta.pause_s < 5.0, "paused {} s", snap.meta.pause_s);
    probe::check_doc(vm.http_addr(), image.docs.index(), Duration::from_secs(10)).expect("serving after the snapshot");
    let config = vm.config();
    vm.kill();

    for round in 0..2 {
        let started = Instant::now();
        let vm = Vm::restore(&image, &config, &Snapshot::open(&snap.dir).unwrap()).expect("restore");
        let loaded = started.elapsed();
        let ready =
            probe::wait_correct(vm.http_addr(), image.docs.index(), Instant::now() + Duration::from_secs(20), || true)
                .expect("correct answer after restore");
        eprintln!("round {round}: loaded in {loaded:?}, correct answer {:?} after the restore began", ready - started);
        assert_eq!(vm.http_addr().port(), config.http_port.unwrap(), "clients must find the service where it was");
        vm.agent().wait_heartbeat(0, Duration::from_secs(10)).expect("the agent's heartbeat goes on after restore");
    }
}

#[test]
fn corrupt_snapshot_is_refused() {
    use recovery_sut::snapshot::Snapshot;
    use recovery_sut::vm::save;
    let image = tiny_image();
    let store = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(&image, &VmConfig { shared_ram: true, ..tcg() }).expect("start");
    vm.wait_phase("services-ready", BOOT).expect("boot");
    let snap = save::take(&mut vm, &store.path().join("svc"), "services-ready").expect("snapshot");
    let state = snap.state_file();
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let err = Snapshot::open(&snap.dir).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("state"), "{err}");
    std::fs::OpenOptions::new().write(true).open(snap.ram_file()).unwrap().set_len(4096).unwrap();
    let err = Snapshot::open(&snap.dir).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
}

fn panic_and_recover(
    sut: &mut recovery_sut::Sut,
    strategy: recovery_sut::Strategy,
) -> recovery_sut::recovery::RecoveryTiming {
    sut.vm().qmp().execute("inject-nmi", None).expect("inject-nmi");
    recover_after_crash(sut, strategy)
}

fn recover_after_crash(
    sut: &mut recovery_sut::Sut,
    strategy: recovery_sut::Strategy,
) -> recovery_sut::recovery::RecoveryTiming {
    use recovery_sut::recovery::FailureCause;
    let failure = sut.wait_failure(Duration::from_secs(30), Duration::from_secs(5)).expect("failure detected");
    assert_eq!(failure.cause, FailureCause::GuestPanicked);
    let timing = sut.recover(strategy, &failure).expect("recovered");
    let image = sut.vm().image().clone();
    for doc in image.docs.docs.iter().step_by(40) {
        probe::check_doc(sut.vm().http_addr(), doc, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}: {e}", doc.path));
    }
    timing
}

#[test]
fn each_strategy_recovers_a_kernel_panic_and_serves_correct_content() {
    use recovery_sut::{Strategy, Sut};
    let image = tiny_image();
    let config = VmConfig { extra_cmdline: vec!["unknown_nmi_panic".into()], ..tcg() };
    let mut sut = Sut::boot(&image, &config).expect("boot");
    sut.snapshot_service().expect("snapshot");
    let port = sut.vm().http_addr().port();
    for (round, strategy) in [
        Strategy::FullReboot,
        Strategy::ServiceRestore,
        Strategy::PhaseRestore,
        Strategy::ServiceRestore,
        Strategy::FullReboot,
    ]
    .into_iter()
    .enumerate()
    {
        // NMI panics from outside, then sysrq crashes through the agent
        // (which also shows the agent's command channel survives a restore).
        // As campaigns and `kfi recover` do, the SUT is told which strategy
        // the next recovery asks for: its standby goes to that snapshot.
        sut.prepare_for(strategy);
        let timing = if round < 3 {
            panic_and_recover(&mut sut, strategy)
        } else {
            sut.vm().agent().send("sysrq c").expect("agent command");
            recover_after_crash(&mut sut, strategy)
        };
        assert_eq!(timing.strategy, strategy, "{timing:?}");
        assert!(timing.fallback_reason.is_none(), "{timing:?}");
        assert_eq!(sut.vm().http_addr().port(), port, "the service moved");
        // Every restore runs on the QEMU launched beforehand on its snapshot
        // (its disks inactive beside the running VM's, its ports bound once
        // loaded); a reboot restores nothing.
        assert_eq!(timing.standby, strategy != Strategy::FullReboot, "{timing:?}");
    }
}

#[test]
fn corrupt_snapshots_fall_back_to_the_next_strategy_and_say_why() {
    use recovery_sut::{Strategy, Sut};
    let corrupt = |state: std::path::PathBuf| {
        let mut bytes = std::fs::read(&state).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&state, bytes).unwrap();
    };
    // One byte of guest RAM changed in place with the mtime set back: only
    // the full hash of the RAM file can see it.
    let corrupt_ram_behind_its_mtime = |ram: std::path::PathBuf| {
        use std::io::{Seek, SeekFrom, Write};
        let mtime = std::fs::metadata(&ram).unwrap().modified().unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0x5a]).unwrap();
        f.set_modified(mtime).unwrap();
    };
    let image = tiny_image();
    let config = VmConfig { extra_cmdline: vec!["unknown_nmi_panic".into()], ..tcg() };
    let mut sut = Sut::boot(&image, &config).expect("boot");
    corrupt_ram_behind_its_mtime(sut.snapshot_service().expect("snapshot").ram_file());
    let timing = panic_and_recover(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.requested, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::PhaseRestore);
    let reason = timing.fallback_reason.expect("a reason");
    assert!(reason.contains("service snapshot") && reason.contains("ram has SHA-256"), "{reason}");

    // With the phase snapshot's device state broken too, only a full
    // reboot is left.
    corrupt(sut.phase_snapshot().expect("phase snapshot").state_file());
    let timing = panic_and_recover(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::FullReboot);
    let reason = timing.fallback_reason.expect("a reason");
    assert!(reason.contains("service snapshot") && reason.contains("phase snapshot"), "{reason}");
    assert!(reason.contains("corrupt") && reason.contains("state"), "{reason}");
}

/// Writes to the data disk make the service snapshot stale before the
/// failure: the SUT moves its standby to the phase snapshot (with RAM of
/// its own) ahead of time, the service restore falls back to it on that
/// standby, a fresh service snapshot is taken once the restored service is
/// quiet, and the next recovery restores that one as itself.
#[test]
fn a_fallback_known_before_the_failure_runs_on_the_standby_and_the_service_snapshot_is_taken_again() {
    use recovery_sut::{Strategy, Sut};
    let image = tiny_image();
    let mut sut = Sut::boot(&image, &VmConfig { data_disk: true, ..tcg() }).expect("boot");
    sut.snapshot_service().expect("snapshot");
    sut.prepare_for(Strategy::ServiceRestore);
    for seq in 1..=3u64 {
        sut.vm().agent().send(&format!("append {seq}")).expect("agent command");
        assert!(sut.vm().agent().wait_ack(seq, Duration::from_secs(10)), "write {seq} not acknowledged");
    }
    sut.prepare_for(Strategy::ServiceRestore);
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::PhaseRestore, "{timing:?}");
    assert!(timing.fallback_reason.as_deref().unwrap_or("").contains("data disk was written"), "{timing:?}");
    assert!(timing.standby, "the fallback was known before the failure, its standby ready: {timing:?}");
    // Nothing writes the disk now: the recovery (or the upkeep after it)
    // takes the service snapshot again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sut.service_snapshot_due() && std::time::Instant::now() < deadline {
        sut.maintain().expect("upkeep");
    }
    assert!(!sut.service_snapshot_due(), "no fresh service snapshot after the phase restore");
    let fresh = sut.service_snapshot().expect("a service snapshot").clone();
    assert_eq!(fresh.meta.phase, "services-ready");
    sut.prepare_for(Strategy::ServiceRestore);
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::ServiceRestore, "{timing:?}");
    assert!(timing.standby, "{timing:?}");
    let answer =
        probe::http_get(sut.vm().http_addr(), "/data/acked", Duration::from_secs(10)).expect("GET /data/acked");
    let on_disk = String::from_utf8_lossy(&answer.body).to_string();
    for seq in 1..=3u64 {
        assert!(on_disk.lines().any(|l| l.trim() == seq.to_string()), "write {seq} lost: {on_disk:?}");
    }
}

#[test]
fn acknowledged_writes_survive_every_strategy() {
    use recovery_sut::{Strategy, Sut};
    let image = tiny_image();
    let mut sut = Sut::boot(&image, &VmConfig { data_disk: true, ..tcg() }).expect("boot");
    assert!(sut.phase_snapshot().is_some(), "the tiny guest holds at userland for a phase snapshot");
    sut.snapshot_service().expect("snapshot");
    let mut next = 1u64;
    for strategy in [Strategy::ServiceRestore, Strategy::PhaseRestore, Strategy::FullReboot] {
        for _ in 0..10 {
            sut.vm().agent().send(&format!("append {next}")).expect("agent command");
            assert!(sut.vm().agent().wait_ack(next, Duration::from_secs(10)), "write {next} not acknowledged");
            next += 1;
        }
        sut.vm().agent().send("sysrq c").expect("agent command");
        let timing = recover_after_crash(&mut sut, strategy);
        if strategy == Strategy::ServiceRestore {
            // Writes since the snapshot make it unsafe: the guest would come
            // back with a page cache that disagrees with the disk.
            assert_eq!(timing.strategy, Strategy::PhaseRestore, "{timing:?}");
            assert!(timing.fallback_reason.as_deref().unwrap_or("").contains("data disk was written"), "{timing:?}");
        } else {
            assert_eq!(timing.strategy, strategy, "{timing:?}");
        }
        // Fails on a status other than 200.
        let on_disk = probe::acked_on_disk(sut.vm().http_addr(), Duration::from_secs(10)).expect("GET /data/acked");
        for seq in 1..next {
            assert!(on_disk.contains(&seq), "acknowledged write {seq} lost after {strategy}: disk has {on_disk:?}");
        }
    }
}

#[test]
fn a_renamed_watched_file_makes_recovery_reboot_and_take_fresh_snapshots() {
    use recovery_sut::agent::FileState;
    use recovery_sut::{Strategy, Sut};
    let image = tiny_image();
    let mut sut = Sut::boot(&image, &tcg()).expect("boot");
    let snap = sut.snapshot_service().expect("snapshot").clone();
    assert!(
        matches!(snap.meta.watched.get("/www/index.html"), Some(FileState::Present { .. })),
        "the snapshot's manifest lacks the served index: {:?}",
        snap.meta.watched
    );
    assert_eq!(
        snap.meta.watched.keys().map(String::as_str).collect::<Vec<_>>(),
        image.profile().watched_files(),
        "every watched file is in the manifest"
    );

    // Nothing changed: the snapshot is restored.
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::ServiceRestore, "{timing:?}");
    assert!(timing.fallback_reason.is_none(), "{timing:?}");

    // The served index is renamed away while the system runs: the monitor
    // reports it, and both snapshots depend on it.
    sut.vm().agent().send("mv /www/index.html /www/index.old").expect("agent command");
    let state = sut.vm().agent().wait_change("/www/index.html", Duration::from_secs(15)).expect("change reported");
    assert_eq!(state, FileState::Missing);
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::FullReboot, "{timing:?}");
    let reason = timing.fallback_reason.expect("a reason");
    eprintln!("fallback: {reason}");
    assert!(reason.contains("/www/index.html") && reason.contains("service snapshot"), "{reason}");
    assert!(reason.contains("phase snapshot"), "the phase snapshot depends on it too: {reason}");

    // The reboot took fresh snapshots on the way up: the next crash is
    // restored from them again.
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::ServiceRestore);
    assert_eq!(timing.strategy, Strategy::ServiceRestore, "{timing:?}");
    assert!(timing.fallback_reason.is_none(), "{timing:?}");
    sut.vm().agent().send("sysrq c").expect("agent command");
    let timing = recover_after_crash(&mut sut, Strategy::PhaseRestore);
    assert_eq!(timing.strategy, Strategy::PhaseRestore, "{timing:?}");
}

#[test]
fn a_hang_is_caught_by_the_watchdog_or_the_service_probe_without_heartbeats() {
    use recovery_sut::recovery::{Detectors, FailureCause, ServiceProbe};
    use recovery_sut::{Strategy, Sut};
    use std::time::Instant;
    let image = tiny_image();
    let mut sut = Sut::boot(&image, &VmConfig { watchdog_s: Some(2), ..tcg() }).expect("boot");
    sut.snapshot_service().expect("snapshot");
    let quiet = Detectors { heartbeat_timeout: None, watchdog: true, probe: Some(ServiceProbe::default()) };
    // Fed and serving: neither detector fires while the guest is healthy.
    let err = sut.wait_failure_with(Duration::from_secs(6), &quiet).unwrap_err();
    assert!(err.to_string().contains("no failure"), "{err}");

    for (detectors, want) in [
        (Detectors { probe: None, ..quiet }, Some(FailureCause::Watchdog)),
        (Detectors { watchdog: false, ..quiet }, Some(FailureCause::ServiceProbe)),
        (quiet, None),
    ] {
        sut.vm().agent().send("freeze").expect("agent command");
        let frozen = Instant::now();
        let failure = sut.wait_failure_with(Duration::from_secs(60), &detectors).expect("the hang is detected");
        let latency = failure.detected_at.duration_since(frozen);
        eprintln!("{:?} after {latency:?}", failure.cause);
        match want {
            Some(cause) => assert_eq!(failure.cause, cause),
            None => assert!(matches!(failure.cause, FailureCause::Watchdog | FailureCause::ServiceProbe)),
        }
        assert!(latency < Duration::from_secs(15), "{:?} took {latency:?}", failure.cause);
        let timing = sut.recover(Strategy::ServiceRestore, &failure).expect("recovered");
        assert_eq!(timing.cause, failure.cause);
        probe::check_doc(sut.vm().http_addr(), image.docs.index(), Duration::from_secs(10)).expect("serving");
    }
}

#[test]
fn kexec_reboot_recovers_a_crash_in_the_crash_kernel_and_serves_correct_content() {
    use recovery_sut::recovery::FailureCause;
    use recovery_sut::{Strategy, Sut};
    let image = tiny_image();
    let config = Strategy::KexecReboot.vm_config(&VmConfig { data_disk: true, ..tcg() }, image.profile());
    // Sut::boot returns once the crash kernel is loaded.
    let mut sut = Sut::boot(&image, &config).expect("boot");
    sut.vm().agent().wait_heartbeat(0, BOOT).expect("heartbeat");
    sut.vm().agent().send("append 1").unwrap();
    assert!(sut.vm().agent().wait_ack(1, Duration::from_secs(10)), "write 1 not acknowledged");

    sut.vm().agent().send("sysrq c").unwrap();
    let failure = sut.wait_failure(Duration::from_secs(30), Duration::from_secs(5)).expect("failure");
    assert_eq!(failure.cause, FailureCause::GuestCrashLoaded, "pvpanic reports the loaded crash kernel");
    let timing = sut.recover(Strategy::KexecReboot, &failure).expect("recovered");
    eprintln!("kexec-reboot: {timing:?}");
    eprintln!(
        "crash kernel phases {:?}, failure at {:?}",
        sut.vm().agent().phases(),
        failure.detected_at.duration_since(sut.vm().started())
    );
    assert_eq!(timing.strategy, Strategy::KexecReboot, "{timing:?}");
    assert!(timing.fallback_reason.is_none(), "{timing:?}");
    // It really is the crash kernel (no firmware, no reset): the kernel
    // was started by kexec with its own command line.
    let console = std::fs::read_to_string(sut.vm().console_log()).unwrap();
    assert!(
        console.contains("elfcorehdr=") && console.contains("kfi.kexec=crash"),
        "no crash kernel boot on the console"
    );
    for doc in image.docs.docs.iter().step_by(40) {
        probe::check_doc(sut.vm().http_addr(), doc, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}: {e}", doc.path));
    }
    let answer = probe::http_get(sut.vm().http_addr(), "/data/acked", Duration::from_secs(10)).unwrap();
    assert_eq!(String::from_utf8_lossy(&answer.body).trim(), "1", "the acknowledged write survived");

    // The crash kernel has no crash kernel of its own: the next panic is
    // a plain one, and kexec-reboot falls back to a full reboot, which
    // loads one again for the panic after.
    sut.vm().agent().send("sysrq c").unwrap();
    let failure = sut.wait_failure(Duration::from_secs(30), Duration::from_secs(5)).expect("failure");
    assert_eq!(failure.cause, FailureCause::GuestPanicked);
    let timing = sut.recover(Strategy::KexecReboot, &failure).expect("recovered");
    assert_eq!(timing.strategy, Strategy::FullReboot, "{timing:?}");
    assert!(timing.fallback_reason.as_deref().unwrap_or("").contains("no crash kernel loaded"), "{timing:?}");
    sut.vm().agent().send("sysrq c").unwrap();
    let failure = sut.wait_failure(Duration::from_secs(30), Duration::from_secs(5)).expect("failure");
    assert_eq!(failure.cause, FailureCause::GuestCrashLoaded);
    let timing = sut.recover(Strategy::KexecReboot, &failure).expect("recovered");
    assert_eq!(timing.strategy, Strategy::KexecReboot, "{timing:?}");
    probe::check_doc(sut.vm().http_addr(), image.docs.index(), Duration::from_secs(10)).expect("serving");
}

/// A diagnostic, not a check: how a lazy restore's time splits into QEMU's
/// launch (which a standby takes ahead of need), loading the state, and the
/// first answers of the restored guest. Under TCG a new QEMU starts with an
/// empty translation cache, so the guest pays for translating every code
/// path it runs again: the TB counts (QEMU's `info jit`) after each answer
/// show how much. Rounds 3 and 4 leave the guest idle for 500 ms first,
/// which separates what the resume itself costs (timers, the agent) from
/// what the first request's own path costs.
/// `cargo test -p recovery-sut --test tiny_vm -- --ignored --nocapture first_answers`
#[test]
#[ignore]
fn first_answers_after_a_restore() {
    use recovery_sut::vm::save;
    use std::time::Instant;
    let image = tiny_image();
    let config = VmConfig { shared_ram: true, ..tcg() };
    let mut vm = Vm::start(&image, &config).expect("start");
    vm.wait_phase("services-ready", BOOT).expect("boot");
    vm.agent().wait_heartbeat(0, BOOT).expect("heartbeat");
    let dir = tempfile::tempdir().unwrap();
    let snap = save::take(&mut vm, &dir.path().join("s"), "services-ready").expect("snapshot");
    let config = vm.config();
    drop(vm);
    let index = image.docs.index();
    let translated = |vm: &mut Vm| {
        let out = vm.qmp().execute("human-monitor-command", Some(serde_json::json!({"command-line": "info jit"})));
        let text = out.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let count = text.lines().find_map(|l| l.strip_prefix("TB count")).map(str::trim);
        count.unwrap_or("?").to_string()
    };
    for round in 0..5 {
        let idle = if round >= 3 { Duration::from_millis(500) } else { Duration::ZERO };
        let t = Instant::now();
        let standby = Vm::standby(&image, &config, &snap).expect("standby");
        let launched = t.elapsed();
        let t = Instant::now();
        let mut vm = Vm::restore_on(standby).expect("restore");
        let restored = t.elapsed();
        std::thread::sleep(idle);
        let before = translated(&mut vm);
        let mut answers = Vec::new();
        for doc in [index, index, &image.docs.docs[7], index, index] {
            let a = Instant::now();
            probe::check_doc(vm.http_addr(), doc, Duration::from_secs(5)).expect("answer");
            let ms = a.elapsed().as_secs_f64() * 1000.0;
            answers.push(format!("{ms:.1} ms ({} TBs)", translated(&mut vm)));
        }
        eprintln!(
            "round {round}: QEMU launch {:.1} ms, state load to running {:.1} ms, idle {} ms ({before} TBs), answers: {}",
            launched.as_secs_f64() * 1000.0,
            restored.as_secs_f64() * 1000.0,
            idle.as_millis(),
            answers.join(", ")
        );
    }
}
