//! The real tiny guest through both restore paths: a page cache filled from
//! a disk and dropped again (memory reduction), the lazy restore (RAM file
//! mapped copy-on-write) and the streamed one (device state and RAM in one
//! migration stream) both serving correct content, and restores from a
//! slow emulated device measurably slower than from the page cache.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use recovery_sut::storage::{self, LoopDevice, ReadThrottle};
use recovery_sut::vm::save;
use recovery_sut::{memory, probe, snapshot, Accel, Vm, VmConfig};
use support::tiny_image;

const BOOT: Duration = Duration::from_secs(90);

#[test]
fn lazy_and_streamed_restores_serve_correct_content_and_slow_storage_is_slower() {
    let image = tiny_image();
    let work = tempfile::tempdir_in(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "/var/tmp".into())).unwrap();
    let fill = work.path().join("fill.raw");
    memory::make_fill_disk(&fill, 48, 1).unwrap();
    let config = VmConfig {
        accel: Accel::Tcg,
        memory_mib: 256,
        shared_ram: true,
        fill_disk: Some(fill.clone()),
        free_page_reporting: true,
        data_disk: true,
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&image, &config).expect("start");
    vm.wait_http(BOOT).expect("boot");
    vm.wait_phase("services-ready", BOOT).expect("services-ready");

    // The fill lands in the page cache, and drop_caches frees it.
    let before = memory::meminfo(&vm).unwrap();
    memory::fill_page_cache(&vm, Duration::from_secs(120)).unwrap();
    let filled = memory::meminfo(&vm).unwrap();
    assert!(
        filled.cached_kb >= before.cached_kb + 40 * 1024,
        "fill did not reach the page cache: {before:?} -> {filled:?}"
    );
    let full_ram = snapshot::allocated_bytes(&vm.run_dir().join("guest.ram")).unwrap();
    memory::drop_caches(&vm).unwrap();
    let dropped = memory::meminfo(&vm).unwrap();
    assert!(dropped.cached_kb + 40 * 1024 <= filled.cached_kb, "drop_caches freed little: {filled:?} -> {dropped:?}");
    // Free-page reporting hands the freed pages back: the RAM file shrinks.
    let reduced_ram = memory::settle_reporting(&vm, Duration::from_secs(30)).unwrap();
    assert!(reduced_ram + (24 << 20) < full_ram, "RAM file {full_ram} -> {reduced_ram} bytes after reporting");

    let snap = save::take(&mut vm, &work.path().join("snap"), "services-ready").expect("lazy snapshot");
    let stream = work.path().join("stream");
    let stream_bytes = save::take_stream(&mut vm, &stream).expect("streamed snapshot");
    assert!(stream_bytes > snap.stored_bytes().unwrap() / 2, "the stream holds the RAM");
    drop(vm);

    let restore = Vm::restore_lazy;
    let timed = |start: &dyn Fn() -> Vm| {
        let t = Instant::now();
        let vm = start();
        vm.wait_http(Duration::from_secs(60)).expect("correct answer after restore");
        let took = t.elapsed();
        for doc in image.docs.docs.iter().step_by(40) {
            probe::check_doc(vm.http_addr(), doc, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{}: {e}", doc.path));
        }
        took
    };
    storage::warm(&snap.ram_file()).unwrap();
    storage::warm(&stream).unwrap();
    let lazy = timed(&|| restore(&image, &config, &snap, &snap.ram_file(), &mut |_| Ok(())).expect("lazy restore"));
    let streamed = timed(&|| Vm::restore_streamed(&image, &config, &stream, None, &mut |_| Ok(())).expect("streamed"));
    // 15 MB/s: the stream (tens of MB) takes seconds, the page cache a fraction.
    let rate = 15_000_000;
    let slow_streamed =
        timed(&|| Vm::restore_streamed(&image, &config, &stream, Some(rate), &mut |_| Ok(())).expect("slow streamed"));
    let least = Duration::from_secs_f64(stream_bytes as f64 / rate as f64 * 0.8);
    // The margin is physical (the bytes at the rate), not a ratio of
    // timings that another tenant of the CPUs can stretch.
    assert!(slow_streamed > least && slow_streamed > streamed, "{slow_streamed:?} vs {streamed:?}");

    // The lazy path from a cold, throttled device: only the pages the
    // guest touches are read, yet they come at the device's pace.
    let device = LoopDevice::attach(&snap.ram_file()).unwrap();
    let throttle = ReadThrottle::new(&device.dev_id(), 20_000_000).unwrap();
    storage::drop_cached(device.path()).unwrap();
    let slow_lazy = timed(&|| {
        restore(&image, &config, &snap, device.path(), &mut |vm| {
            throttle.add(vm.pid()).map_err(|e| recovery_sut::VmError::Restore(e.to_string()))
        })
        .expect("throttled lazy restore")
    });
    let read = throttle.read_bytes().unwrap();
    assert!(read >= 16_000_000, "the lazy restore read only {read} B from the device");
    let least = Duration::from_secs_f64(read as f64 / 20_000_000.0 * 0.8);
    assert!(slow_lazy > least && slow_lazy > lazy, "{slow_lazy:?} vs {lazy:?} ({read} B read)");
    drop(throttle);
    eprintln!(
        "lazy {lazy:?}, streamed {streamed:?} ({stream_bytes} B), streamed at 15 MB/s {slow_streamed:?}, lazy cold at 20 MB/s {slow_lazy:?} ({read} B read); \
         RAM file {full_ram} -> {reduced_ram} B, page cache {} -> {} -> {} kB",
        before.cached_kb, filled.cached_kb, dropped.cached_kb
    );
}
