//! An update campaign end to end on the real tiny guest: interrupted after
//! its first update, it resumes with nothing lost or run twice, and the
//! report and figures are written from the store; `kfi report` writes the
//! same from the store alone.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};

use analysis::update::{RecordedUpdateStrategy, UpdateStore};
use kfi::update::campaign;
use kfi::update::spec::UpdateCampaign;
use recovery_sut::Cache;

mod support;

const FILE: &str = r#"
name = "update-test"
description = "reboot and shadow-reboot once each"
repetitions = 1
[guest]
profile = "tiny"
to = "6.1.0-57-amd64"
[workload]
warmup_s = 1.0
[update]
strategies = ["reboot", "shadow-reboot"]
"#;

#[test]
fn an_interrupted_update_campaign_resumes_and_reports_from_its_store() {
    let cache = Cache::from_env().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("update-test");
    let spec = UpdateCampaign::parse(std::path::Path::new("update-test.toml"), FILE).unwrap();
    // Ctrl-C while the first update runs: it is stored, the second is not run.
    let stop = AtomicBool::new(false);
    let first = campaign::run(&cache, &spec, FILE, &results, &stop, &|m: &str| {
        if m.starts_with("experiment 1 of 2") {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(first.interrupted && first.ran == 1 && first.report.is_none());
    assert_eq!(UpdateStore::read(&results).unwrap().len(), 1);

    let other = FILE.replace("repetitions = 1", "repetitions = 2");
    let err = campaign::run(&cache, &spec, &other, &results, &AtomicBool::new(false), &|_: &str| {}).err().unwrap();
    assert!(err.to_string().contains("holds the results of another experiment file"), "{err}");

    let second = campaign::run(&cache, &spec, FILE, &results, &AtomicBool::new(false), &|_: &str| {}).unwrap();
    assert_eq!((second.ran, second.resumed, second.interrupted), (1, 1, false));
    let records = UpdateStore::read(&results).unwrap();
    let kinds: Vec<(u64, RecordedUpdateStrategy)> = records.iter().map(|r| (r.index, r.strategy)).collect();
    assert_eq!(kinds, vec![(0, RecordedUpdateStrategy::Reboot), (1, RecordedUpdateStrategy::ShadowReboot)]);
    for r in &records {
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.to_release, "6.1.0-57-amd64");
        assert!(r.downtime_s.is_some() && r.writes_acked > 0 && r.writes_lost.is_empty(), "{r:?}");
        assert!(r.provenance.kfi_commit.is_some() && r.to_kernel_origin.contains("6.1.0-57-amd64"));
    }
    let report = second.report.expect("complete: the report is written");
    assert_eq!(report.figures.len(), 2);
    let md = std::fs::read_to_string(&report.path).unwrap();
    assert!(md.starts_with("**ShadowReboot cut the client-seen downtime"), "{md}");

    std::fs::remove_file(&report.path).unwrap();
    let again = campaign::report(&results).unwrap();
    assert_eq!(again.headline, report.headline, "the report comes from the store alone");
}
