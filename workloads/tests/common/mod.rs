//! What the workloads' tests share: test servers on 127.0.0.1 for the load
//! generator (a small hyper server with per-path behaviour and counters,
//! and the document set it serves), and the pinned kernel for the tests
//! that boot a real guest.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use workloads::{Doc, DocList};

/// The guest kernel `kernel.lock` pins, resolved (and fetched) into the
/// cache, for the tests that boot a real guest.
pub fn pinned_kernel(cache: &recovery_sut::Cache) -> recovery_sut::Kernel {
    let lock = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel.lock"));
    let choice = recovery_sut::KernelChoice::locked(lock, None).expect("kernel.lock");
    recovery_sut::kernel::resolve(cache, &choice, &|_| {}).expect("resolving the pinned kernel")
}

/// The documents every test serves: a small page, a text file, and a body
/// large enough to arrive in many frames.
pub fn documents() -> Vec<(String, Vec<u8>)> {
    let big: Vec<u8> = (0..200_000u32).map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize]).collect();
    vec![
        ("/index.html".into(), b"<!doctype html><p>kfi test</p>\n".to_vec()),
        ("/a.txt".into(), b"alpha ".repeat(100)),
        ("/big.txt".into(), big),
    ]
}

/// The document list for `files`, as a guest image would write it.
pub fn doc_list(files: &[(String, Vec<u8>)]) -> DocList {
    DocList {
        seed: 1,
        docs: files
            .iter()
            .map(|(path, data)| Doc {
                path: path.clone(),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            })
            .collect(),
    }
}

/// How the server answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Path to content; other paths get 404.
    pub files: HashMap<String, Bytes>,
    /// Paths answered with status 200 and the wrong bytes.
    pub wrong: HashSet<String>,
    /// Delay before each answer.
    pub delay: Duration,
    /// Never answer at all.
    pub stall: bool,
}

impl Behaviour {
    /// Serves `files` correctly.
    pub fn serving(files: &[(String, Vec<u8>)]) -> Self {
        Self { files: files.iter().map(|(p, d)| (p.clone(), Bytes::from(d.clone()))).collect(), ..Self::default() }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests that reached the handler.
    pub requests: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    in_flight: AtomicU64,
    /// Most requests in the handler at once.
    pub max_in_flight: AtomicU64,
}

impl Stats {
    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A hyper HTTP/1.1 server on its own thread and runtime.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts on a free port of 127.0.0.1.
    pub fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("literal address"), behaviour)
    }

    /// Starts on `addr` (std sets SO_REUSEADDR, so a port just closed by
    /// `stop` can be bound again).
    pub fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(addr).expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_stats = Arc::clone(&stats);
        let behaviour = Arc::new(behaviour);
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("test server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::spawn(accept_loop(listener, behaviour, thread_stats));
                // Either a stop or the handle being dropped ends the server.
                let _ = stopped.await;
            });
            // Dropping the runtime drops the listener and every connection
            // task, closing all their sockets before `stop` returns.
            drop(runtime);
        });
        Self { addr, stats, stop: Some(stop), thread: Some(thread) }
    }

    /// Closes the listener and every connection; returns once they are closed.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("test server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, behaviour: Arc<Behaviour>, stats: Arc<Stats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let behaviour = Arc::clone(&behaviour);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let behaviour = Arc::clone(&behaviour);
                let stats = Arc::clone(&stats);
                async move { Ok::<_, Infallible>(answer(&behaviour, &stats, request.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(behaviour: &Behaviour, stats: &Stats, path: &str) -> Response<Full<Bytes>> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(stats);
    if behaviour.stall {
        std::future::pending::<()>().await;
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let response = match behaviour.files.get(path) {
        Some(_) if behaviour.wrong.contains(path) => Response::new(Full::new(Bytes::from_static(b"not this"))),
        Some(data) => Response::new(Full::new(data.clone())),
        None => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"no such document")));
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            response
        }
    };
    response
}

/// Counts a request in flight until dropped, which also happens when the
/// client gives up and hyper drops the handler mid-answer.
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address")
}

/// A bare std server that answers one request per connection and then,
/// after `linger`, closes the connection without saying so (no
/// `Connection: close`), discarding any request sent meanwhile: what a
/// server's keep-alive timeout or restart does to a client's idle
/// connection.
pub struct SilentCloser {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub answered: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentCloser {
    /// Starts on a free port of 127.0.0.1, serving `files`.
    pub fn start(files: &[(String, Vec<u8>)], linger: Duration) -> Self {
        use std::io::{Read, Write};

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let files: HashMap<String, Vec<u8>> = files.iter().cloned().collect();
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_answered, thread_stop) = (Arc::clone(&answered), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let Some(body) = files.get(&path) else { continue };
                // Counted before writing: once the client has the answer,
                // the test may read the count at any moment.
                thread_answered.fetch_add(1, Ordering::SeqCst);
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(body);
                std::thread::sleep(linger);
                // Dropped with the next request unread: the kernel answers
                // with a reset, as for a server that closed at that moment.
            }
        });
        Self { addr, answered, stop, thread: Some(thread) }
    }
}

impl Drop for SilentCloser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
