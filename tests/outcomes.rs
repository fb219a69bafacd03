//! Outcomes from evidence, with the real tiny guest: a QEMU killed during
//! a fault's window is `vm-exit` (not a panic) and is recovered; a gdbstub
//! connection that fails while QEMU runs is the harness's failure, retried
//! and stored as `harness-error`, and the campaign goes on. The test knobs
//! (`test-knobs`) do the killing and the severing half a second into the
//! window; what the harness makes of it is the code under test.
#![cfg(feature = "test-knobs")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use analysis::record::RecordedOutcome;
use analysis::store::Store;
use support::kfi;

mod support;

const FILE: &str = r#"
name = "outcomes"
seed = 5
repetitions = 1

[guest]
profile = "tiny"
accel = "tcg"
data_disk = true

[workload]
kind = "apache"
clients = 2
warmup_s = 0.5

[observe]
window_s = 3.0
tail_s = 0.2
hang_timeout_s = 2.0

[[inject]]
faults = { models = ["nop"], count = 3, functions = ["__do_sys_kexec_file_load"] }

[recovery]
strategies = ["service-restore"]
"#;

#[test]
fn a_killed_qemu_is_vm_exit_and_a_severed_gdbstub_is_a_harness_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outcomes.toml");
    std::fs::write(&file, FILE).unwrap();
    let results = dir.path().join("results");
    let out = kfi()
        .args(["campaign", "run"])
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(["--jobs", "1", "--retries", "1"])
        .env("KFI_TEST_KILL_QEMU", "0")
        .env("KFI_TEST_SEVER_GDBSTUB", "1")
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "a harness error remains: exit 3\n{text}");
    let records = Store::open(results.join("campaign.sqlite")).unwrap().records("outcomes").unwrap();
    assert_eq!(records.len(), 3, "{text}");

    // Killed: the machine went away without a panic report. The fault
    // (code nobody runs) was not activated, so the failure is not the
    // fault's: flagged, not credited.
    let killed = &records[0];
    assert_eq!(killed.outcome, RecordedOutcome::VmExit, "{killed:?}");
    assert!(killed.unattributed, "{killed:?}");
    assert_eq!(killed.events.len(), 1, "{:?}", killed.events);
    assert!(killed.events[0].what.contains("QEMU exited"), "{:?}", killed.events);
    let recovery = killed.recovery.as_ref().expect("a VM gone is a failure to recover from");
    assert_eq!(recovery.cause.name(), "qemu-exited");
    assert!(recovery.recovered, "{recovery:?}");

    // Severed: the harness's failure, never an outcome of the fault.
    let severed = &records[1];
    assert_eq!(severed.outcome, RecordedOutcome::HarnessError, "{severed:?}");
    let h = severed.harness_error.as_ref().unwrap();
    assert_eq!(h.attempts, 2, "{h:?}");
    assert!(h.errors.iter().all(|e| e.contains("gdbstub connection failed while QEMU still runs")), "{h:?}");

    // The campaign went on.
    assert_eq!(records[2].outcome, RecordedOutcome::NotActivated, "{:?}", records[2]);
    assert!(records[2].events.is_empty() && !records[2].unattributed);
}
