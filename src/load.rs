//! The one way kfi offers client load to a guest: the static document
//! workload or RUBiS sessions, blocking or on a thread of their own, every
//! request recorded with its times relative to one origin.
//!
//! `kfi inject`, `kfi recover`, `kfi workload run`, the campaign's golden
//! run and each experiment all start their clients here, so that a knob
//! (think time, failure pause, timeout, seed) means the same thing in each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use workloads::rubis::{self, Ack, Mix, RubisSpec};
use workloads::{ClosedLoop, DocList, LoadProgress, LoadSpec, Mode, Record};

/// The failure pause of every downtime measurement: the resolution at
/// which a client sees the service come back.
pub const DOWNTIME_FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// The availability probe's period: one request for the index page every
/// 10 ms, whatever the answers, so that its outage is measured at that
/// resolution and does not depend on the workload's clients (which
/// documents they happened to ask for, their think time, their timeouts).
pub const PROBE_PERIOD: Duration = Duration::from_millis(10);

/// A probe request unanswered this long failed; requests go on being
/// started meanwhile (open loop), up to [`PROBE_IN_FLIGHT`] at once.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probe requests in flight at most: a second of requests hanging on a
/// dead guest, with room to spare.
pub const PROBE_IN_FLIGHT: usize = 128;

/// A failure is injected only this soon after the static clients' latest
/// correct answer (see [`RunningLoad::wait_answered`]): a closed-loop
/// client answered every few milliseconds, so a longer silence is a wait
/// the clients are already in, which the downtime would otherwise count.
pub const ANSWERED_WITHIN: Duration = Duration::from_millis(100);

/// How long a failure waits for the clients to be answered before the
/// experiment gives up as a harness error.
pub const ANSWER_GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the load goes on after a recovery for the static clients to
/// get their first correct answer: on a loaded machine a client's request
/// can wait out its timeout more than once before the restored service
/// answers, and a run that ends first sees no recovery at all.
pub const RECOVERED_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The least load after a recovery: a probe request sent during the outage
/// ends only at its timeout, and must end inside the run.
pub const PROBE_TAIL: Duration = PROBE_TIMEOUT.saturating_add(Duration::from_millis(100));

/// The availability probe's outage across the failure at `failure_at`
/// (seconds since the run's origin): the client-seen downtime's definition
/// over the probe's records; `None` when it cannot be measured or the
/// service did not come back.
pub fn probe_outage(probed: &[workloads::Record], failure_at: f64) -> Option<f64> {
    workloads::analyze(probed, failure_at, &workloads::DowntimeConfig::default()).ok()?.downtime.seconds()
}

/// What the clients request.
#[derive(Debug, Clone)]
pub enum Clients {
    /// Documents of the guest's document set, each answer checked
    /// byte-exact; `think` is a fixed pause.
    Static(DocList),
    /// RUBiS sessions walking `mix`; `think` is the mean of a negative
    /// exponential pause.
    Rubis(Mix),
    /// The availability probe: the first document of the set (the index
    /// page), started every [`PROBE_PERIOD`] in open loop; `count`, `think`
    /// and `failure_pause` do not apply.
    Probe(DocList),
}

impl ClientLoad {
    /// The availability probe for the document set `docs` (its first
    /// document, `/index.html`, is what it asks for), running for
    /// `duration` unless stopped first.
    pub fn probe(docs: &DocList, duration: Duration) -> ClientLoad {
        let index = DocList { seed: docs.seed, docs: docs.docs.iter().take(1).cloned().collect() };
        ClientLoad {
            clients: Clients::Probe(index),
            count: 1,
            think: Duration::ZERO,
            failure_pause: Duration::ZERO,
            timeout: PROBE_TIMEOUT,
            duration,
            seed: 0,
        }
    }
}

/// One run of closed-loop clients.
#[derive(Debug, Clone)]
pub struct ClientLoad {
    /// What they request.
    pub clients: Clients,
    /// How many run at once.
    pub count: usize,
    /// Pause between a client's requests (see [`Clients`]).
    pub think: Duration,
    /// Least pause after a failed request: the resolution at which a client
    /// sees the service come back, and what keeps a refused connection from
    /// becoming a busy loop.
    pub failure_pause: Duration,
    /// A request unanswered this long failed.
    pub timeout: Duration,
    /// How long requests keep being started, unless stopped first.
    pub duration: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
}

/// What the clients saw: every request, and the writes the site
/// acknowledged (RUBiS; none for the static workload).
#[derive(Debug, Default)]
pub struct ClientRun {
    /// One record per request.
    pub records: Vec<Record>,
    /// Writes the RUBiS site acknowledged.
    pub acks: Vec<Ack>,
}

/// Runs `load` against `addr` until its duration ends or `stop` is set.
pub fn run(addr: SocketAddr, load: &ClientLoad, origin: Instant, stop: Arc<AtomicBool>) -> Result<ClientRun> {
    run_observed(addr, load, origin, stop, None)
}

/// [`run`], telling `progress` of each correct answer of the static
/// clients as it ends (RUBiS sessions and the probe do not).
fn run_observed(
    addr: SocketAddr,
    load: &ClientLoad,
    origin: Instant,
    stop: Arc<AtomicBool>,
    progress: Option<Arc<LoadProgress>>,
) -> Result<ClientRun> {
    match &load.clients {
        Clients::Static(docs) => {
            let spec = LoadSpec {
                mode: Mode::Closed(ClosedLoop {
                    clients: load.count.max(1),
                    think: load.think,
                    failure_pause: load.failure_pause,
                }),
                duration: load.duration,
                timeout: load.timeout,
                seed: load.seed,
            };
            let records = workloads::run_blocking_observed(addr, docs, &spec, origin, stop, progress)
                .context("running the static-document clients")?;
            Ok(ClientRun { records, acks: Vec::new() })
        }
        Clients::Rubis(mix) => {
            let spec = RubisSpec {
                think_mean: load.think,
                timeout: load.timeout,
                failure_pause: load.failure_pause,
                seed: load.seed,
                ..RubisSpec::new(*mix, load.count.max(1), load.duration)
            };
            let run = rubis::run_blocking_until(addr, &spec, origin, stop).context("running the RUBiS clients")?;
            Ok(ClientRun { records: run.records, acks: run.acks })
        }
        Clients::Probe(index) => {
            let spec = LoadSpec {
                mode: Mode::Open(workloads::OpenLoop {
                    rate: 1.0 / PROBE_PERIOD.as_secs_f64(),
                    max_in_flight: PROBE_IN_FLIGHT,
                }),
                duration: load.duration,
                timeout: load.timeout,
                seed: load.seed,
            };
            let records = workloads::run_blocking_until(addr, index, &spec, origin, stop)
                .context("running the availability probe")?;
            Ok(ClientRun { records, acks: Vec::new() })
        }
    }
}

/// Clients running on a thread of their own while the caller injects,
/// watches and recovers. Dropping it stops the clients (their thread ends
/// on its own); [`RunningLoad::finish`] stops them and collects the run.
pub struct RunningLoad {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<ClientRun>>>,
    /// The static clients' live progress (none for RUBiS and the probe).
    progress: Option<Arc<LoadProgress>>,
}

impl RunningLoad {
    /// Starts `load` against `addr`, times relative to `origin`.
    pub fn start(addr: SocketAddr, load: ClientLoad, origin: Instant) -> RunningLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let progress = matches!(load.clients, Clients::Static(_)).then(|| Arc::new(LoadProgress::default()));
        let feed = progress.clone();
        let thread = std::thread::spawn(move || run_observed(addr, &load, origin, flag, feed));
        RunningLoad { stop, thread: Some(thread), progress }
    }

    /// Waits until the static clients' latest correct answer ended at most
    /// [`ANSWERED_WITHIN`] ago, so that a failure injected now starts its
    /// downtime at a service that was answering, not during a wait the
    /// clients were already in; gives up after `timeout`. Returns that
    /// answer's age (seconds) when the failure may come, `None` for loads
    /// it cannot watch (RUBiS sessions think for seconds between pages).
    pub fn wait_answered(&self, origin: Instant, timeout: Duration) -> Result<Option<f64>> {
        let Some(progress) = &self.progress else { return Ok(None) };
        let deadline = Instant::now() + timeout;
        loop {
            let now = origin.elapsed().as_secs_f64();
            if let Some(age) = progress.last_correct_end().map(|end| now - end) {
                if age <= ANSWERED_WITHIN.as_secs_f64() {
                    return Ok(Some(age.max(0.0)));
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the clients got no correct answer within {ANSWERED_WITHIN:?} of any moment in {timeout:?} before \
                     the injection (latest at {:?} s): the service was not answering, so no failure was injected",
                    progress.last_correct_end()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits, at most `timeout`, until a static client's correct answer
    /// ends after `since_s` (seconds since `origin`); `false` if none did.
    /// Loads it cannot watch (RUBiS, the probe) return `true` at once.
    pub fn wait_answered_after(&self, since_s: f64, timeout: Duration) -> bool {
        let Some(progress) = &self.progress else { return true };
        let deadline = Instant::now() + timeout;
        while progress.last_correct_end().is_none_or(|end| end <= since_s) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stops the clients and returns what they saw.
    pub fn finish(mut self) -> Result<ClientRun> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().context("the load was already collected")?;
        thread.join().map_err(|_| anyhow::anyhow!("the load generator thread panicked"))?
    }
}

impl Drop for RunningLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const BODY: &[u8] = b"<html>kfi</html>";

    fn docs() -> DocList {
        let doc = workloads::Doc {
            path: "/index.html".into(),
            size: BODY.len() as u64,
            sha256: hex::encode(Sha256::digest(BODY)),
        };
        DocList { seed: 0, docs: vec![doc] }
    }

    /// A real HTTP/1.1 server on loopback answering every request on a
    /// kept-alive connection with `BODY`.
    fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut chunk) {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY.len());
                            if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(BODY)).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn clients(docs: DocList) -> ClientLoad {
        ClientLoad {
            clients: Clients::Static(docs),
            count: 1,
            think: Duration::from_millis(2),
            failure_pause: DOWNTIME_FAILURE_PAUSE,
            timeout: Duration::from_millis(500),
            duration: Duration::from_secs(30),
            seed: 1,
        }
    }

    #[test]
    fn a_failure_waits_for_a_recent_answer_and_gives_up_on_a_silent_service() {
        let origin = Instant::now();
        let load = RunningLoad::start(serve(), clients(docs()), origin);
        let age = load.wait_answered(origin, Duration::from_secs(5)).unwrap().expect("static clients are watched");
        assert!((0.0..=ANSWERED_WITHIN.as_secs_f64()).contains(&age), "{age}");
        let run = load.finish().unwrap();
        assert!(run.records.iter().any(Record::is_correct));

        // Nothing listens: no answer, and after the timeout an error that
        // says no failure was injected.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let load = RunningLoad::start(silent, clients(docs()), origin);
        let err = load.wait_answered(origin, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("no failure was injected"), "{err}");
        load.finish().unwrap();

        // The probe is not watched: nothing to wait for.
        let probe = RunningLoad::start(serve(), ClientLoad::probe(&docs(), Duration::from_secs(1)), origin);
        assert_eq!(probe.wait_answered(origin, Duration::from_millis(10)).unwrap(), None);
        probe.finish().unwrap();
    }
}
