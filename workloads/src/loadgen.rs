//! The static HTTP load generator: closed-loop clients or an open-loop
//! fixed rate against one server, for a fixed duration, one [`Record`] per
//! request.
//!
//! HTTP/1.1 only, no TLS, kept-alive connections. A request's outcome,
//! whatever it is, becomes its record: connection errors and timeouts are
//! measurements, so nothing that happens on the wire ends or fails a run.
//! Errors from [`run`] are about its inputs, or a bug in a task.
//!
//! The run stops starting requests once its duration is over and then waits
//! for those in flight, each of which ends by its own deadline: a run takes
//! at most `duration + timeout` and every request started has a record.

mod closed;
mod exchange;

pub(crate) use exchange::stale_connection;
mod open;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::Uri;

use crate::docs::{DocList, DocListProblem, RequestPicker};
use crate::record::{seconds_since, Record, RequestOutcome};
use exchange::{Conn, Endpoint, Target};

/// Closed-loop load: `clients` users, each with one request outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedLoop {
    /// Number of concurrent clients.
    pub clients: usize,
    /// Pause after each request before the next.
    pub think: Duration,
    /// Least pause after a failed request, so a refused connection does not
    /// turn a client into a busy loop; it is also the resolution at which a
    /// client notices that the service is back.
    pub failure_pause: Duration,
}

/// Open-loop load: requests start at a fixed rate regardless of completions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    /// Requests started per second.
    pub rate: f64,
    /// Most requests in flight at once; a request due while all slots are
    /// busy waits for one within its own deadline and is recorded as a
    /// timeout if none frees up in time.
    pub max_in_flight: usize,
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Fixed number of clients, each waiting for its answer.
    Closed(ClosedLoop),
    /// Fixed arrival rate, bounded concurrency.
    Open(OpenLoop),
}

/// Everything about a run except where it goes and what it asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSpec {
    /// How load is offered.
    pub mode: Mode,
    /// How long requests keep being started.
    pub duration: Duration,
    /// Per-request limit, covering connect, answer and body (and, in open
    /// loop, the wait for an in-flight slot).
    pub timeout: Duration,
    /// Seed of the document choice: the same seed asks for the same
    /// documents in the same order on each client.
    pub seed: u64,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The document list is unusable.
    #[error("the document list cannot be used for load")]
    Docs(#[source] DocListProblem),
    /// A closed loop with no clients.
    #[error("closed-loop load needs at least one client")]
    NoClients,
    /// An open-loop rate that is not a positive finite number.
    #[error("open-loop rate must be a positive, finite number of requests per second, not {0}")]
    BadRate(f64),
    /// An open loop that may have nothing in flight.
    #[error("open-loop load needs room for at least one request in flight")]
    NoInFlight,
    /// A zero per-request timeout: every request would time out.
    #[error("the per-request timeout must be longer than zero")]
    ZeroTimeout,
    /// A path or address that does not make a valid HTTP request.
    #[error("cannot build a request for {what}")]
    Request {
        /// The path or address.
        what: String,
        /// What the HTTP types said.
        #[source]
        source: hyper::http::Error,
    },
    /// The runtime of [`run_blocking`] could not be started.
    #[error("cannot start the load generator's async runtime")]
    Runtime(#[source] std::io::Error),
    /// A request task panicked or was cancelled: a bug, not a measurement.
    #[error("a load generator task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What every request of a run shares.
#[derive(Debug)]
pub(crate) struct Plan {
    endpoint: Endpoint,
    targets: Vec<Target>,
    origin: Instant,
    stop_at: Instant,
    timeout: Duration,
    /// Set by the caller to end the run before its duration is over.
    stop: Arc<AtomicBool>,
    /// Told of every correct answer, for a caller watching the run live.
    progress: Option<Arc<LoadProgress>>,
}

/// A running load's live view for its caller: when its latest correct
/// answer ended. A caller that injects a failure waits for a recent one,
/// so that a wait the clients were already in (the guest slow to answer
/// them) is not counted as the failure's downtime.
#[derive(Debug, Default)]
pub struct LoadProgress {
    /// End of the latest correct answer, in microseconds since the run's
    /// origin, plus one (0: none yet).
    last_correct_end_us: AtomicU64,
}

impl LoadProgress {
    /// End of the latest correct answer so far, seconds since the origin.
    pub fn last_correct_end(&self) -> Option<f64> {
        match self.last_correct_end_us.load(Ordering::Acquire) {
            0 => None,
            us => Some((us - 1) as f64 / 1e6),
        }
    }

    fn note(&self, record: &Record) {
        if record.is_correct() && record.end.is_finite() && record.end >= 0.0 {
            self.last_correct_end_us.fetch_max((record.end * 1e6) as u64 + 1, Ordering::AcqRel);
        }
    }
}

impl Plan {
    fn new(
        target: SocketAddr,
        docs: &DocList,
        spec: &LoadSpec,
        origin: Instant,
        stop: Arc<AtomicBool>,
        progress: Option<Arc<LoadProgress>>,
    ) -> Result<Self, LoadError> {
        docs.validate().map_err(LoadError::Docs)?;
        match spec.mode {
            Mode::Closed(c) if c.clients == 0 => return Err(LoadError::NoClients),
            Mode::Open(o) if !(o.rate.is_finite() && o.rate > 0.0) => return Err(LoadError::BadRate(o.rate)),
            Mode::Open(o) if o.max_in_flight == 0 => return Err(LoadError::NoInFlight),
            _ => {}
        }
        if spec.timeout.is_zero() {
            return Err(LoadError::ZeroTimeout);
        }
        let host = HeaderValue::try_from(target.to_string())
            .map_err(|e| LoadError::Request { what: format!("address {target}"), source: e.into() })?;
        let mut targets = Vec::with_capacity(docs.docs.len());
        for doc in &docs.docs {
            let uri = Uri::try_from(doc.path.as_str())
                .map_err(|e| LoadError::Request { what: format!("path {:?}", doc.path), source: e.into() })?;
            // `validate` has checked every digest; this keeps the two in step
            // should it ever stop doing so.
            let digest = doc.digest().ok_or_else(|| {
                LoadError::Docs(DocListProblem::BadDigest {
                    index: targets.len(),
                    path: doc.path.clone(),
                    sha256: doc.sha256.clone(),
                })
            })?;
            targets.push(Target { path: doc.path.clone(), uri, digest });
        }
        Ok(Self {
            endpoint: Endpoint { addr: target, host },
            targets,
            origin,
            stop_at: Instant::now() + spec.duration,
            timeout: spec.timeout,
            stop,
            progress,
        })
    }

    /// Whether no new request may start at `now`.
    pub(crate) fn over(&self, now: Instant) -> bool {
        now >= self.stop_at || self.stop.load(Ordering::Relaxed)
    }

    /// Sends one request for document `index` that counts as started at
    /// `start`, and records its outcome at whatever deadline `start` implies.
    async fn request(&self, conn: &mut Option<Conn>, index: usize, start: Instant) -> Record {
        let Some(target) = self.targets.get(index) else {
            // Pickers draw below the document count, so this is unreachable;
            // recorded as a failure rather than a panic all the same.
            return self.record(index, start, RequestOutcome::IoError, 0);
        };
        let deadline = start + self.timeout;
        let mut bytes = 0;
        let fetch = exchange::get(conn, &self.endpoint, target, &mut bytes);
        let outcome = match tokio::time::timeout_at(deadline.into(), fetch).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => {
                // The connection went down with the dropped future (it was
                // taken out of `conn`); whatever was in flight on it is lost.
                *conn = None;
                RequestOutcome::Timeout
            }
        };
        self.record(index, start, outcome, bytes)
    }

    /// The record of a request for document `index`, ending now.
    fn record(&self, index: usize, start: Instant, outcome: RequestOutcome, bytes: u64) -> Record {
        let record = Record {
            start: seconds_since(self.origin, start),
            end: seconds_since(self.origin, Instant::now()),
            path: self.targets.get(index).map(|t| t.path.clone()).unwrap_or_default(),
            outcome,
            bytes,
        };
        if let Some(progress) = &self.progress {
            progress.note(&record);
        }
        record
    }
}

/// Offers load to `target` for `spec.duration` from now and returns every
/// request's record, sorted by start, with times in seconds since `origin`.
///
/// Must run inside a Tokio runtime with I/O and time enabled; see
/// [`run_blocking`] for callers without one. Fails only on unusable inputs
/// or a task bug, never because of what the server does.
pub async fn run(
    target: SocketAddr,
    docs: &DocList,
    spec: &LoadSpec,
    origin: Instant,
) -> Result<Vec<Record>, LoadError> {
    run_until(target, docs, spec, origin, Arc::new(AtomicBool::new(false)), None).await
}

/// [`run`], ending early once `stop` is set: no request starts after that,
/// and those in flight finish (each by its own deadline). The duration
/// stays an upper bound. `progress`, if given, is told of every correct
/// answer as it ends.
pub async fn run_until(
    target: SocketAddr,
    docs: &DocList,
    spec: &LoadSpec,
    origin: Instant,
    stop: Arc<AtomicBool>,
    progress: Option<Arc<LoadProgress>>,
) -> Result<Vec<Record>, LoadError> {
    let plan = Arc::new(Plan::new(target, docs, spec, origin, stop, progress)?);
    tracing::info!(%target, mode = ?spec.mode, duration = ?spec.duration, timeout = ?spec.timeout, "load starts");
    let mut records = match spec.mode {
        Mode::Closed(closed_loop) => {
            let mut clients = tokio::task::JoinSet::new();
            for client in 0..closed_loop.clients {
                let picker = RequestPicker::new(docs, spec.seed, client as u64).map_err(LoadError::Docs)?;
                clients.spawn(closed::client(Arc::clone(&plan), closed_loop, picker));
            }
            let mut records = Vec::new();
            while let Some(done) = clients.join_next().await {
                records.extend(done.map_err(LoadError::Task)?);
            }
            records
        }
        Mode::Open(open_loop) => {
            let picker = RequestPicker::new(docs, spec.seed, 0).map_err(LoadError::Docs)?;
            open::run(Arc::clone(&plan), open_loop, picker).await?
        }
    };
    records.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
    let correct = records.iter().filter(|r| r.is_correct()).count();
    tracing::info!(requests = records.len(), correct, "load ends");
    Ok(records)
}

/// [`run`] on a runtime of its own, for synchronous callers (typically on a
/// thread of their own while they inject the fault).
///
/// The runtime is single-threaded: one core parses and hashes far more
/// answers than a guest under emulation serves, and the other core stays
/// free for QEMU.
pub fn run_blocking(
    target: SocketAddr,
    docs: &DocList,
    spec: &LoadSpec,
    origin: Instant,
) -> Result<Vec<Record>, LoadError> {
    run_blocking_until(target, docs, spec, origin, Arc::new(AtomicBool::new(false)))
}

/// [`run_until`] on a runtime of its own.
pub fn run_blocking_until(
    target: SocketAddr,
    docs: &DocList,
    spec: &LoadSpec,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Record>, LoadError> {
    run_blocking_observed(target, docs, spec, origin, stop, None)
}

/// [`run_until`] with `progress` on a runtime of its own.
pub fn run_blocking_observed(
    target: SocketAddr,
    docs: &DocList,
    spec: &LoadSpec,
    origin: Instant,
    stop: Arc<AtomicBool>,
    progress: Option<Arc<LoadProgress>>,
) -> Result<Vec<Record>, LoadError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(LoadError::Runtime)?;
    runtime.block_on(run_until(target, docs, spec, origin, stop, progress))
}
