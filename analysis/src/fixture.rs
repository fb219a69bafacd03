//! A synthetic campaign with known numbers, for tests of the analysis and
//! of the commands that report (`kfi report`, `kfi reproduce`).
//!
//! Downtimes per strategy (apache, `crash:sysrq`, 5 repetitions each):
//! full-reboot 20, 21, 22, 23, 24 s (median 22); service-restore 1.0, 1.2,
//! 1.4, 1.6, 1.8 s (median 1.4, reduction 1 − 1.4/22 = 93.6%);
//! phase-restore 5, 6, 7, 8, 9 s (median 7). Then 10 injected faults
//! (`reg-flip`, subsystems `mm` and `fs`), 4 restore-vs-RAM measurements and
//! 2 restore-vs-storage ones. The 8 activated faults were traced: scopes
//! process-local, process-local, kernel-global, process-local, masked,
//! process-local, kernel-global, unknown (mm gets the even ones: 1
//! process-local, 2 kernel-global, 1 masked; fs 3 process-local, 1
//! unknown): 4 of the 6 settled non-masked errors stayed process-local.

use crate::record::{
    ExperimentRecord, Injection, Propagation, Provenance, RecordIdentity, RecordedAccel, RecordedCause, RecordedCrash,
    RecordedModel, RecordedOutcome, RecordedProfile, RecordedScope, RecordedStrategy, RecordedWorkload, RecoveryRecord,
    TimelineBin,
};
use crate::store::CampaignMeta;

/// Campaign name of the fixture.
pub const CAMPAIGN: &str = "fixture";

/// Provenance shared by the fixture's records.
pub fn provenance() -> Provenance {
    Provenance {
        accel: RecordedAccel::Tcg,
        qemu_version: "10.0.2".into(),
        kernel_version: "6.12.38+deb13-amd64".into(),
        profile: RecordedProfile::Tiny,
        ram_mb: 256,
        seed: 7,
        kfi_version: "0.1.0".into(),
        host: "ci".into(),
        kfi_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        kfi_dirty: Some(false),
        kernel_origin: Some("debian:linux-image-6.12.38+deb13-amd64=6.12.38-1".into()),
        kernel_build_id: Some("3f2a9c0d11e4b5a6978812aa00bb11cc22dd33ee".into()),
        image_recipe: Some("a1b2c3d4e5f60718".into()),
        image_packages: None,
        host_cpu: Some("Fixture CPU @ 2.0GHz".into()),
        host_cores: Some(2),
    }
}

/// A record with everything but identity and results left neutral.
pub fn blank(experiment: u64, key: &str) -> ExperimentRecord {
    ExperimentRecord {
        wall_s: 30.0,
        window_s: 20.0,
        ..ExperimentRecord::unmeasured(RecordIdentity {
            campaign: CAMPAIGN.into(),
            experiment,
            key: key.into(),
            workload: RecordedWorkload::Apache,
            injection: Injection::None,
            outcome: RecordedOutcome::Benign,
            provenance: provenance(),
            started_at: format!("2026-01-01T00:{:02}:{:02}Z", experiment / 60 % 60, experiment % 60),
        })
    }
}

/// A forced sysrq crash under apache recovered by `strategy` in
/// `downtime_s`, with a 100 ms timeline of 50 answers/s that stops for the
/// downtime.
pub fn crash(experiment: u64, strategy: RecordedStrategy, rep: u32, downtime_s: f64) -> ExperimentRecord {
    let mut r = blank(experiment, &format!("strategy={strategy} crash=sysrq rep={rep}"));
    r.injection = Injection::Crash { crash: RecordedCrash::Sysrq };
    r.outcome = RecordedOutcome::ForcedCrash;
    r.recovery = Some(RecoveryRecord {
        requested: strategy,
        used: strategy,
        fallback_reason: None,
        cause: RecordedCause::GuestPanicked,
        recovered: true,
        detect_s: 0.05,
        restart_s: downtime_s * 0.7,
        service_s: downtime_s * 0.3 - 0.05,
        on_standby: None,
        stages: None,
    });
    r.downtime_s = Some(downtime_s);
    r.throughput_back_s = Some(downtime_s + 0.5);
    r.timeline = (-20..((downtime_s + 5.0) * 10.0) as i32)
        .map(|k| {
            let t_s = f64::from(k) / 10.0;
            let down = t_s >= 0.0 && t_s < downtime_s;
            TimelineBin {
                t_s,
                correct: if down { 0 } else { 5 },
                failed: u64::from(down),
                p50_s: (!down).then_some(0.004),
            }
        })
        .collect();
    r.requests = r.timeline.iter().map(|b| b.correct + b.failed).sum();
    r.correct = r.timeline.iter().map(|b| b.correct).sum();
    r.acked_writes = Some(40);
    r.lost_writes = Some(0);
    r
}

/// The downtime experiments: full-reboot, phase-restore and
/// service-restore, 5 each (indices 0..15).
pub fn downtime_records() -> Vec<ExperimentRecord> {
    let mut out = Vec::new();
    let sets: [(RecordedStrategy, [f64; 5]); 3] = [
        (RecordedStrategy::FullReboot, [22.0, 20.0, 24.0, 21.0, 23.0]),
        (RecordedStrategy::PhaseRestore, [7.0, 5.0, 9.0, 6.0, 8.0]),
        (RecordedStrategy::ServiceRestore, [1.4, 1.0, 1.8, 1.2, 1.6]),
    ];
    for (strategy, downtimes) in sets {
        for (rep, d) in downtimes.into_iter().enumerate() {
            out.push(crash(out.len() as u64, strategy, rep as u32, d));
        }
    }
    out
}

/// Every fixture record (indices 0..31).
pub fn records() -> Vec<ExperimentRecord> {
    let mut out = downtime_records();
    // 10 faults: 8 activated (4 panic, 2 oops, 2 benign), 2 not activated.
    let outcomes = [
        RecordedOutcome::Panic,
        RecordedOutcome::Panic,
        RecordedOutcome::Panic,
        RecordedOutcome::Panic,
        RecordedOutcome::Oops,
        RecordedOutcome::Oops,
        RecordedOutcome::Benign,
        RecordedOutcome::Benign,
        RecordedOutcome::NotActivated,
        RecordedOutcome::NotActivated,
    ];
    for (i, o) in outcomes.into_iter().enumerate() {
        let n = out.len() as u64;
        let mut r = blank(n, &format!("model=reg-flip target={i}"));
        let activated = o != RecordedOutcome::NotActivated;
        r.injection = Injection::Fault {
            model: RecordedModel::RegFlip,
            subsystem: Some(if i % 2 == 0 { "mm" } else { "fs" }.into()),
            function: Some(format!("func_{i}")),
            description: format!("flip bit {i} of rax"),
            spec: serde_json::json!({ "model": "reg-flip", "bit": i }),
            activated,
            activation_unknown: None,
            activation_s: activated.then_some(0.5 + i as f64 / 10.0),
            propagation: activated.then(|| {
                let s = [
                    RecordedScope::ProcessLocal,
                    RecordedScope::ProcessLocal,
                    RecordedScope::KernelGlobal,
                    RecordedScope::ProcessLocal,
                    RecordedScope::Masked,
                    RecordedScope::ProcessLocal,
                    RecordedScope::KernelGlobal,
                    RecordedScope::Unknown,
                ][i];
                Box::new(Propagation {
                    scope: s,
                    why: format!("fixture {i}"),
                    activating: Some(format!("task{i}[{}]", 100 + i)),
                    foreign_readers: if s == RecordedScope::KernelGlobal {
                        vec!["kworker/0:1[12]".into()]
                    } else {
                        vec![]
                    },
                    reads: if s == RecordedScope::Masked { 0 } else { 2 },
                    reporting_readers: Vec::new(),
                    steps: 100 * i as u64,
                    short_s: 0.1,
                    long_s: 2.0,
                    short_end: "died".into(),
                    surfaced_in: (i == 0).then(|| "fs".into()),
                    surfaced_elsewhere: (i == 0).then_some(true),
                    detail: serde_json::Value::Null,
                })
            }),
            profile: None,
            class_weight: None,
            surfaced_in: None,
        };
        r.outcome = o;
        out.push(r);
    }
    // Restore time vs RAM, with and without reduction.
    for (ram, reduction, restore) in [(256, "off", 0.8), (1024, "off", 2.4), (256, "on", 0.5), (1024, "on", 0.9)] {
        let n = out.len() as u64;
        let mut r = blank(n, &format!("ram_mb={ram} reduction={reduction}"));
        r.params.insert("ram_mb".into(), ram.to_string());
        r.params.insert("reduction".into(), reduction.into());
        r.metrics.insert("restore_s".into(), restore);
        out.push(r);
    }
    for (storage, restore) in [("nvme", 0.6), ("hdd", 3.5)] {
        let n = out.len() as u64;
        let mut r = blank(n, &format!("storage={storage}"));
        r.params.insert("storage".into(), storage.into());
        r.metrics.insert("restore_s".into(), restore);
        out.push(r);
    }
    out
}

/// The fixture campaign's description.
pub fn meta() -> CampaignMeta {
    CampaignMeta {
        name: CAMPAIGN.into(),
        file_sha256: "0".repeat(64),
        seed: 7,
        total: records().len() as u64,
        definition: serde_json::json!({ "name": CAMPAIGN }),
    }
}
