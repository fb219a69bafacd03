//! The static workload against the real tiny guest (busybox httpd under
//! QEMU): every answer is correct and every document is reachable.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

mod common;

use recovery_sut::{guest, Accel, Cache, Vm, VmConfig};
use workloads::{ClosedLoop, DocList, LoadSpec, Mode, OpenLoop, RequestOutcome};

#[test]
fn static_load_against_the_tiny_guest_has_no_errors_and_correct_digests() {
    let cache = Cache::from_env().unwrap();
    let k = common::pinned_kernel(&cache);
    let image = guest::ensure(&cache, &guest::Recipe::Tiny, &k, &|_| {}).unwrap();
    let vm = Vm::start(&image, &VmConfig { accel: Accel::Tcg, ..VmConfig::default() }).unwrap();
    vm.wait_http(Duration::from_secs(90)).unwrap();
    let docs = DocList::load(&image.dir.join("docs.json")).unwrap();

    let closed = LoadSpec {
        mode: Mode::Closed(ClosedLoop { clients: 2, think: Duration::ZERO, failure_pause: Duration::from_millis(10) }),
        duration: Duration::from_secs(3),
        timeout: Duration::from_secs(5),
        seed: 3,
    };
    let open = LoadSpec {
        mode: Mode::Open(OpenLoop { rate: 20.0, max_in_flight: 8 }),
        duration: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        seed: 4,
    };
    for spec in [closed, open] {
        let records = workloads::run_blocking(vm.http_addr(), &docs, &spec, Instant::now()).unwrap();
        assert!(records.len() >= 20, "only {} requests", records.len());
        let bad: Vec<_> = records.iter().filter(|r| r.outcome != RequestOutcome::Ok).collect();
        assert!(
            bad.is_empty(),
            "{} of {} requests were not correct: {:?}",
            bad.len(),
            records.len(),
            &bad[..bad.len().min(5)]
        );
        for r in &records {
            let doc = docs.docs.iter().find(|d| d.path == r.path).unwrap();
            assert_eq!(r.bytes, doc.size, "{}", r.path);
        }
    }
}
