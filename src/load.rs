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
use workloads::{ClosedLoop, DocList, LoadSpec, Mode, Record};

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
            let records = workloads::run_blocking_until(addr, docs, &spec, origin, stop)
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
}

impl RunningLoad {
    /// Starts `load` against `addr`, times relative to `origin`.
    pub fn start(addr: SocketAddr, load: ClientLoad, origin: Instant) -> RunningLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || run(addr, &load, origin, flag));
        RunningLoad { stop, thread: Some(thread) }
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
