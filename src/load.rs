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

/// What the clients request.
#[derive(Debug, Clone)]
pub enum Clients {
    /// Documents of the guest's document set, each answer checked
    /// byte-exact; `think` is a fixed pause.
    Static(DocList),
    /// RUBiS sessions walking `mix`; `think` is the mean of a negative
    /// exponential pause.
    Rubis(Mix),
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
