//! The load generator against real servers on 127.0.0.1: what each request
//! gets is what its record says, and the records carry an outage into the
//! downtime computation.
//!
//! Every run is bounded by its duration plus one timeout, well under a
//! second or two each.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{closed_port, doc_list, documents, Behaviour, SilentCloser, TestServer};
use workloads::downtime::{analyze, downtime, DowntimeConfig, Recovery};
use workloads::{seconds_since, ClosedLoop, DocList, LoadError, LoadSpec, Mode, OpenLoop, Record, RequestOutcome};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn closed(clients: usize, think_ms: u64, failure_pause_ms: u64) -> Mode {
    Mode::Closed(ClosedLoop { clients, think: ms(think_ms), failure_pause: ms(failure_pause_ms) })
}

fn spec(mode: Mode, duration_ms: u64, timeout_ms: u64) -> LoadSpec {
    LoadSpec { mode, duration: ms(duration_ms), timeout: ms(timeout_ms), seed: 7 }
}

/// Runs load from now, with the origin now; returns the records and how
/// long the run took.
fn load(target: SocketAddr, docs: &DocList, spec: &LoadSpec) -> (Vec<Record>, Duration) {
    let origin = Instant::now();
    let records = workloads::run_blocking(target, docs, spec, origin).expect("load run");
    (records, origin.elapsed())
}

fn count(records: &[Record], outcome: RequestOutcome) -> usize {
    records.iter().filter(|r| r.outcome == outcome).count()
}

#[test]
fn closed_loop_records_exactly_the_requests_the_server_answered() {
    let files = documents();
    let docs = doc_list(&files);
    let server = TestServer::start(Behaviour::serving(&files));
    let (records, took) = load(server.addr, &docs, &spec(closed(1, 2, 10), 400, 1000));

    assert!(records.len() > 20, "only {} requests in 400 ms", records.len());
    assert_eq!(server.stats.requests() as usize, records.len());
    assert_eq!(count(&records, RequestOutcome::Ok), records.len());
    // One client keeps one connection alive for the whole run.
    assert_eq!(server.stats.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    for r in &records {
        let size = docs.docs.iter().find(|d| d.path == r.path).map(|d| d.size);
        assert_eq!(Some(r.bytes), size, "{r:?}");
        assert!(r.end >= r.start, "{r:?}");
    }
    // No request starts once the duration is over (the first starts at once).
    let first_to_last = records.last().map_or(0.0, |r| r.start) - records[0].start;
    assert!(first_to_last < 0.4, "requests started over {first_to_last} s");
    // One client: each request starts after the previous one ended.
    for pair in records.windows(2) {
        assert!(pair[1].start >= pair[0].end, "{pair:?}");
    }
    assert!(took < Duration::from_millis(900), "run took {took:?}");
}

#[test]
fn each_outcome_goes_to_exactly_the_paths_that_earn_it() {
    let files = documents();
    let mut docs = doc_list(&files);
    // Listed but not served: 404.
    docs.docs.push(workloads::Doc { path: "/gone.txt".into(), size: 3, sha256: docs.docs[0].sha256.clone() });
    let mut behaviour = Behaviour::serving(&files);
    behaviour.wrong.insert("/a.txt".into());
    let server = TestServer::start(behaviour);
    let (records, _) = load(server.addr, &docs, &spec(closed(2, 1, 1), 300, 1000));

    for r in &records {
        let want = match r.path.as_str() {
            "/a.txt" => RequestOutcome::WrongContent,
            "/gone.txt" => RequestOutcome::HttpStatus(404),
            _ => RequestOutcome::Ok,
        };
        assert_eq!(r.outcome, want, "{r:?}");
    }
    let seen: HashSet<RequestOutcome> = records.iter().map(|r| r.outcome).collect();
    assert_eq!(
        seen,
        HashSet::from([RequestOutcome::Ok, RequestOutcome::WrongContent, RequestOutcome::HttpStatus(404)])
    );
    assert_eq!(server.stats.requests() as usize, records.len());
}

#[test]
fn stopped_server_gives_connect_errors_and_its_restart_ends_the_downtime() {
    let files = documents();
    let docs = doc_list(&files);
    let mut server = TestServer::start(Behaviour::serving(&files));
    let addr = server.addr;
    let origin = Instant::now();
    // A short think time paces the client by the clock rather than by CPU,
    // so throughput per bin is steady enough to compare with its baseline.
    let run_spec = spec(closed(1, 2, 5), 1500, 500);
    let loader = std::thread::spawn(move || workloads::run_blocking(addr, &docs, &run_spec, origin));

    std::thread::sleep(ms(400));
    let stop_began = seconds_since(origin, Instant::now());
    server.stop();
    let stopped = seconds_since(origin, Instant::now());
    std::thread::sleep(ms(500));
    let restart_began = seconds_since(origin, Instant::now());
    let _restarted = TestServer::start_on(addr, Behaviour::serving(&files));
    let restarted = seconds_since(origin, Instant::now());
    let records = loader.join().expect("load thread").expect("load run");

    for r in records.iter().filter(|r| r.end < stop_began) {
        assert_eq!(r.outcome, RequestOutcome::Ok, "before the stop: {r:?}");
    }
    let down: Vec<&Record> = records.iter().filter(|r| r.start > stopped && r.end < restart_began).collect();
    assert!(down.len() >= 20, "only {} requests while down", down.len());
    for r in &down {
        assert_eq!(r.outcome, RequestOutcome::ConnectError, "while down: {r:?}");
    }
    for r in records.iter().filter(|r| r.start > restarted) {
        assert_eq!(r.outcome, RequestOutcome::Ok, "after the restart: {r:?}");
    }

    // The failure instant is when the server was known to be down.
    let config = DowntimeConfig { bin_secs: 0.1, baseline_secs: 0.3, recovered_fraction: 0.5 };
    let report = analyze(&records, stopped, &config).expect("downtime");
    let Recovery::Recovered { downtime: seconds_down, .. } = report.downtime.recovery else {
        panic!("not recovered: {report:?}");
    };
    assert!(seconds_down >= restart_began - stopped, "downtime {seconds_down} shorter than the outage");
    assert!(seconds_down <= restarted - stop_began + 0.1, "downtime {seconds_down} far longer than the outage");
    let Some(after) = report.throughput.after else {
        panic!("throughput never came back: {report:?}\n{:?}", workloads::Timeline::build(&records, 0.1));
    };
    assert!(after >= restart_began - stopped - config.bin_secs, "throughput back after {after} s");

    // Cut at the restart, the same records show a service that never came
    // back, down for at least the time observed.
    let cut: Vec<Record> = records.iter().filter(|r| r.end < restart_began).cloned().collect();
    let d = downtime(&cut, stopped).expect("downtime of the cut run");
    assert_eq!(d.seconds(), None);
    assert!(d.at_least() >= restart_began - stopped - 0.05, "lower bound {} too short", d.at_least());
}

#[test]
fn open_loop_starts_requests_at_the_rate() {
    let files = documents();
    let docs = doc_list(&files);
    let server = TestServer::start(Behaviour::serving(&files));
    let mode = Mode::Open(OpenLoop { rate: 200.0, max_in_flight: 8 });
    let (records, took) = load(server.addr, &docs, &spec(mode, 500, 1000));

    // Due at k / 200 s for k = 0..100: exactly 100 requests.
    assert_eq!(records.len(), 100);
    assert_eq!(server.stats.requests(), 100);
    assert_eq!(count(&records, RequestOutcome::Ok), 100);
    // Starts are the due instants, 5 ms apart whatever the answers did.
    for pair in records.windows(2) {
        let gap = pair[1].start - pair[0].start;
        assert!((gap - 0.005).abs() < 1e-6, "start gap {gap}");
    }
    assert!(took < Duration::from_millis(1200), "run took {took:?}");
}

#[test]
fn open_loop_bounds_in_flight_and_times_out_what_waits_too_long() {
    let files = documents();
    let docs = doc_list(&files);
    let mut behaviour = Behaviour::serving(&files);
    behaviour.delay = ms(100);
    let server = TestServer::start(behaviour);
    // 100 requests/s against 2 slots of 100 ms each: 20/s can be served.
    let mode = Mode::Open(OpenLoop { rate: 100.0, max_in_flight: 2 });
    let (records, took) = load(server.addr, &docs, &spec(mode, 300, 350));

    assert_eq!(records.len(), 30);
    assert!(server.stats.max_in_flight.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert!(count(&records, RequestOutcome::Ok) >= 4, "{records:?}");
    assert!(count(&records, RequestOutcome::Timeout) >= 10, "{records:?}");
    assert_eq!(count(&records, RequestOutcome::Ok) + count(&records, RequestOutcome::Timeout), 30);
    for r in &records {
        assert!(r.latency() < 0.35 + 0.1, "{r:?}");
    }
    assert!(took < Duration::from_millis(300 + 350 + 300), "run took {took:?}");
}

#[test]
fn a_server_that_never_answers_gives_timeouts_and_the_run_still_ends() {
    let files = documents();
    let docs = doc_list(&files);
    let mut behaviour = Behaviour::serving(&files);
    behaviour.stall = true;
    let server = TestServer::start(behaviour);
    let (records, took) = load(server.addr, &docs, &spec(closed(2, 0, 0), 400, 150));

    // Each client: requests at about 0, 0.15 and 0.30 s, each timing out.
    assert!((4..=6).contains(&records.len()), "{records:?}");
    assert_eq!(count(&records, RequestOutcome::Timeout), records.len());
    for r in &records {
        assert!(r.latency() >= 0.15 && r.latency() < 0.15 + 0.1, "{r:?}");
        assert_eq!(r.bytes, 0);
    }
    assert_eq!(server.stats.requests() as usize, records.len());
    assert!(took < Duration::from_millis(400 + 150 + 300), "run took {took:?}");
}

#[test]
fn nothing_listening_gives_connect_errors_paced_by_the_failure_pause() {
    let docs = doc_list(&documents());
    let (records, _) = load(closed_port(), &docs, &spec(closed(1, 0, 20), 300, 500));

    assert_eq!(count(&records, RequestOutcome::ConnectError), records.len());
    // 300 ms at one attempt per 20 ms or more: at most 16, and not a spin.
    assert!((5..=16).contains(&records.len()), "{} attempts", records.len());
}

#[test]
fn a_kept_alive_connection_the_server_closed_is_retried_not_failed() {
    let files = documents();
    let docs = doc_list(&files);
    // The server closes each connection 20 ms after answering, with the
    // client's next request already sent on it.
    let server = SilentCloser::start(&files, ms(20));
    let (records, _) = load(server.addr, &docs, &spec(closed(1, 0, 5), 300, 1000));

    assert!(records.len() >= 5, "{records:?}");
    assert_eq!(count(&records, RequestOutcome::Ok), records.len(), "{records:?}");
    assert_eq!(server.answered.load(std::sync::atomic::Ordering::SeqCst) as usize, records.len());
}

#[test]
fn the_same_seed_asks_for_the_same_documents() {
    let files = documents();
    let docs = doc_list(&files);
    let server = TestServer::start(Behaviour::serving(&files));
    let paths = |seed| -> Vec<String> {
        let spec = LoadSpec { seed, ..spec(closed(1, 1, 1), 150, 1000) };
        load(server.addr, &docs, &spec).0.into_iter().map(|r| r.path).collect()
    };
    let (a, b, c) = (paths(42), paths(42), paths(43));
    let n = a.len().min(b.len()).min(c.len());
    assert!(n >= 10, "only {n} requests");
    assert_eq!(a[..n], b[..n]);
    assert_ne!(a[..n], c[..n]);
}

#[test]
fn unusable_inputs_are_refused_before_any_request() {
    let docs = doc_list(&documents());
    let addr = closed_port();
    let refused = |docs: &DocList, mode: Mode, timeout_ms: u64| {
        workloads::run_blocking(addr, docs, &spec(mode, 100, timeout_ms), Instant::now()).err()
    };
    assert!(matches!(refused(&docs, closed(0, 0, 0), 100), Some(LoadError::NoClients)));
    let open = |rate, max_in_flight| Mode::Open(OpenLoop { rate, max_in_flight });
    assert!(matches!(refused(&docs, open(0.0, 1), 100), Some(LoadError::BadRate(_))));
    assert!(matches!(refused(&docs, open(f64::NAN, 1), 100), Some(LoadError::BadRate(_))));
    assert!(matches!(refused(&docs, open(10.0, 0), 100), Some(LoadError::NoInFlight)));
    assert!(matches!(refused(&docs, closed(1, 0, 0), 0), Some(LoadError::ZeroTimeout)));
    let empty = DocList { seed: 1, docs: Vec::new() };
    assert!(matches!(refused(&empty, closed(1, 0, 0), 100), Some(LoadError::Docs(_))));
}

#[test]
fn a_stop_signal_ends_the_run_before_its_duration() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let files = documents();
    let docs = doc_list(&files);
    let server = TestServer::start(Behaviour::serving(&files));
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(ms(300));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let begun = Instant::now();
    let records = workloads::run_blocking_until(server.addr, &docs, &spec(closed(2, 2, 10), 20_000, 1000), begun, stop)
        .expect("load");
    let took = begun.elapsed();
    stopper.join().unwrap();
    assert!(took < Duration::from_secs(3), "a 20 s run asked to stop at 0.3 s took {took:?}");
    assert!(!records.is_empty());
    assert_eq!(server.stats.requests() as usize, records.len());
    assert!(
        records.iter().all(|r| r.start < 0.3 + 1.0),
        "a request started long after the stop (a loaded machine may lag a little)"
    );
}

/// A caller watching a run live sees when its latest correct answer ended,
/// while the run goes on; wrong answers do not count.
#[test]
fn the_progress_of_a_run_shows_its_latest_correct_answer_live() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let files = documents();
    let docs = doc_list(&files);
    let server = TestServer::start(Behaviour::serving(&files));
    let progress = Arc::new(workloads::LoadProgress::default());
    assert_eq!(progress.last_correct_end(), None);
    let origin = Instant::now();
    let loader = {
        let (progress, docs) = (Arc::clone(&progress), docs.clone());
        std::thread::spawn(move || {
            let spec = spec(closed(1, 2, 10), 600, 1000);
            let stop = Arc::new(AtomicBool::new(false));
            workloads::run_blocking_observed(server.addr, &docs, &spec, origin, stop, Some(progress))
        })
    };
    std::thread::sleep(ms(300));
    let live = progress.last_correct_end().expect("correct answers by 0.3 s");
    assert!(live > 0.0 && live <= seconds_since(origin, Instant::now()), "{live}");
    let records = loader.join().unwrap().expect("load");
    let last = records.iter().filter(|r| r.is_correct()).map(|r| r.end).fold(f64::MIN, f64::max);
    let seen = progress.last_correct_end().unwrap();
    assert!((seen - last).abs() < 1e-5 && seen > live, "{seen} vs {last}");

    // Against a port nothing listens on no answer is correct.
    let none = Arc::new(workloads::LoadProgress::default());
    let spec = spec(closed(1, 2, 10), 200, 200);
    let records = workloads::run_blocking_observed(
        closed_port(),
        &docs,
        &spec,
        Instant::now(),
        Arc::new(AtomicBool::new(false)),
        Some(Arc::clone(&none)),
    )
    .unwrap();
    assert!(!records.is_empty());
    assert_eq!(none.last_correct_end(), None);
}
