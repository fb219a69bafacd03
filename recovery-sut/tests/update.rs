//! Kernel updates of the real tiny guest: each strategy ends with the new
//! kernel running and the service correct, acknowledged writes kept; a
//! shadow that cannot boot leaves the old kernel serving.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::time::Duration;

use recovery_sut::probe;
use recovery_sut::recovery::UpdateError;
use recovery_sut::{Accel, Sut, UpdateStrategy, VmConfig};
use support::{tiny_updatable_image, UPDATE_TO};

fn config() -> VmConfig {
    VmConfig { accel: Accel::Tcg, data_disk: true, ..VmConfig::default() }
}

/// Appends `count` acknowledged writes from `next` on; returns the next number.
fn write_acked(sut: &mut Sut, next: u64, count: u64) -> u64 {
    for seq in next..next + count {
        sut.vm().agent().send(&format!("append {seq}")).expect("agent command");
        assert!(sut.vm().agent().wait_ack(seq, Duration::from_secs(10)), "write {seq} not acknowledged");
    }
    next + count
}

fn assert_on_disk(sut: &mut Sut, upto: u64, after: &str) {
    // Fails on a status other than 200.
    let on_disk = probe::acked_on_disk(sut.vm().http_addr(), Duration::from_secs(10)).expect("GET /data/acked");
    for seq in 1..upto {
        assert!(on_disk.contains(&seq), "acknowledged write {seq} lost after {after}: disk has {on_disk:?}");
    }
}

#[test]
fn each_update_strategy_ends_on_the_new_kernel_serving_correctly_with_every_write() {
    let image = tiny_updatable_image();
    let old = image.kernel.release.clone();
    for strategy in UpdateStrategy::ALL {
        let mut sut = Sut::boot(&image, &config()).expect("boot");
        assert_eq!(sut.vm().agent().wait_release(Duration::from_secs(30)).as_deref(), Some(old.as_str()));
        sut.snapshot_service().expect("service snapshot");
        let next = write_acked(&mut sut, 1, 5);
        let timing = sut.update(strategy).unwrap_or_else(|e| panic!("update by {strategy}: {e}"));
        eprintln!("{strategy}: {timing:?}");
        assert_eq!(timing.from_release, old);
        assert_eq!(timing.to_release, UPDATE_TO, "{timing:?}");
        assert_eq!(sut.vm().image().kernel.release, UPDATE_TO);
        assert!(timing.phase_snapshot, "{strategy} left no phase snapshot of the new kernel: {timing:?}");
        assert_eq!(timing.shadow.is_some(), strategy == UpdateStrategy::ShadowReboot);
        if strategy == UpdateStrategy::ShadowReboot {
            assert!(timing.standby, "the switch ran on the standby launched while the old kernel served");
        }
        let index = image.docs.index();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        probe::wait_correct(sut.vm().http_addr(), index, deadline, || true).expect("the new kernel serves the index");
        let next = write_acked(&mut sut, next, 3);
        assert_on_disk(&mut sut, next, strategy.name());
        // The recovery snapshots are the new kernel's: a crash now restores
        // onto it, not the old one.
        assert!(sut.service_snapshot().is_some(), "the service snapshot was taken again on the new kernel");
        let phase = sut.phase_snapshot().expect("phase snapshot");
        assert!(phase.meta.kernel.contains(UPDATE_TO), "the phase snapshot is of {}", phase.meta.kernel);
    }
}

#[test]
fn a_shadow_that_cannot_boot_leaves_the_old_kernel_serving_and_names_why() {
    let mut image = tiny_updatable_image();
    let old = image.kernel.release.clone();
    // A corrupt new kernel: bytes QEMU cannot boot.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vmlinux-corrupt");
    std::fs::write(&bad, vec![0x5a; 4 << 20]).unwrap();
    image.update_to.as_mut().unwrap().boot_image = bad;
    let mut sut = Sut::boot(&image, &config()).expect("boot");
    let pid = sut.vm().pid();
    let err = sut.update(UpdateStrategy::ShadowReboot).expect_err("a corrupt kernel cannot be switched to");
    let text = err.to_string();
    assert!(matches!(err, UpdateError::ShadowFailed { .. }), "{text}");
    assert!(text.contains(UPDATE_TO) && text.contains("still serves the old kernel"), "{text}");
    assert_eq!(sut.vm().pid(), pid, "the primary was not touched");
    assert_eq!(sut.vm().image().kernel.release, old);
    let answer = probe::http_get(sut.vm().http_addr(), "/index.html", Duration::from_secs(10)).expect("GET");
    assert_eq!(answer.status, 200);
}

#[test]
fn watched_files_changing_on_the_primary_while_the_shadow_boots_refuse_the_switch() {
    let image = tiny_updatable_image();
    let old = image.kernel.release.clone();
    let mut sut = Sut::boot(&image, &config()).expect("boot");
    assert!(sut.vm().agent().wait_heartbeat(0, Duration::from_secs(30)).is_some());
    // An administrator renames a served directory back and forth (that
    // changes /www, which the safety monitor watches) while the update runs.
    let agent = sut.vm().agent().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let renamer = std::thread::spawn(move || {
        let (a, b) = ("/www/docs", "/www/docs.moved");
        let mut moved = false;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let (from, to) = if moved { (b, a) } else { (a, b) };
            if agent.send(&format!("mv {from} {to}")).is_err() {
                return;
            }
            moved = !moved;
            std::thread::sleep(Duration::from_millis(700));
        }
        if moved {
            let _ = agent.send(&format!("mv {b} {a}"));
        }
    });
    let err = sut.update(UpdateStrategy::ShadowReboot).expect_err("the switch must be refused");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    renamer.join().unwrap();
    let text = err.to_string();
    assert!(matches!(err, UpdateError::Refused(_)), "{text}");
    assert!(text.contains("/www") && text.contains("while the shadow booted"), "{text}");
    assert_eq!(sut.vm().image().kernel.release, old, "the old kernel still serves");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    probe::wait_correct(sut.vm().http_addr(), image.docs.index(), deadline, || true).expect("the old kernel serves");
}
