//! One HTTP/1.1 GET over a kept-alive connection, reduced to an [`RequestOutcome`].
//!
//! Every way a request can go wrong ends here as an outcome, never as an
//! error or a panic: during an outage failures are the data.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::record::RequestOutcome;

/// A document prepared for requesting: parsed once per run, not per request.
#[derive(Debug)]
pub(crate) struct Target {
    /// Path as recorded.
    pub path: String,
    /// Request target (origin form).
    pub uri: Uri,
    /// Expected SHA-256 of the body.
    pub digest: [u8; 32],
}

/// Where requests go.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value, required by HTTP/1.1.
    pub host: HeaderValue,
}

/// An open connection and the task that drives its I/O.
pub(crate) struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A connection is dropped after a timeout or an error, when its state
        // is unknown: aborting the driver closes the socket now instead of
        // leaving it to wait for a server that may never answer.
        self.driver.abort();
    }
}

async fn connect(endpoint: &Endpoint) -> Result<Conn, RequestOutcome> {
    let stream = TcpStream::connect(endpoint.addr).await.map_err(|e| {
        tracing::debug!(addr = %endpoint.addr, error = %e, "connect failed");
        RequestOutcome::ConnectError
    })?;
    // Requests and small answers fit one segment each: without NODELAY,
    // Nagle's algorithm against delayed ACKs can add tens of milliseconds to
    // a request, which would blur downtime at 100 ms resolution. Failing to
    // set it only costs latency, so it is not a reason to fail the request.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
        tracing::debug!(error = %e, "HTTP/1 handshake failed");
        RequestOutcome::IoError
    })?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
    Ok(Conn { sender, driver })
}

/// Whether a request failed only because the reused connection under it had
/// already been closed by the server, before any answer arrived.
pub(crate) fn stale_connection(error: &hyper::Error) -> bool {
    if error.is_canceled() || error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
            return matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof);
        }
        source = cause.source();
    }
    false
}

/// The kept connection if the server has not closed it since its last
/// answer; a closed one is dropped here.
async fn still_open(kept: Option<Conn>) -> Option<Conn> {
    let mut conn = kept?;
    conn.sender.ready().await.ok()?;
    Some(conn)
}

/// Sends one GET for `target`, reusing the connection in `slot` when it is
/// still open and leaving a reusable connection there afterwards.
///
/// Body bytes are counted into `bytes` as they arrive, so a caller that
/// gives up on a timeout still knows how much came back. The caller owns
/// the deadline: dropping this future drops the connection with it.
pub(crate) async fn get(
    slot: &mut Option<Conn>,
    endpoint: &Endpoint,
    target: &Target,
    bytes: &mut u64,
) -> RequestOutcome {
    loop {
        let (mut conn, fresh) = match still_open(slot.take()).await {
            Some(conn) => (conn, false),
            None => match connect(endpoint).await {
                Ok(conn) => (conn, true),
                Err(outcome) => return outcome,
            },
        };
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = target.uri.clone();
        request.headers_mut().insert(HOST, endpoint.host.clone());

        let response = match conn.sender.send_request(request).await {
            Ok(response) => response,
            Err(e) if !fresh && stale_connection(&e) => {
                // A server may close an idle keep-alive connection (its
                // keep-alive timeout, a restart) and we learn it only now.
                // Browsers retry an idempotent request once on a new
                // connection in that case (RFC 9112, 9.3.1), and so do we:
                // the next turn connects afresh, and a fresh connection is
                // never retried, so this loops at most twice.
                tracing::debug!(error = %e, "reused connection was closed; retrying on a new one");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %target.path, "request failed");
                return RequestOutcome::IoError;
            }
        };

        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut hasher = Sha256::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        *bytes += data.len() as u64;
                        hasher.update(data);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, path = %target.path, "body failed");
                    return RequestOutcome::IoError;
                }
            }
        }
        // The answer was read to its end, so the connection can carry the
        // next request; if the server asked to close it, `ready` says so
        // next time and we connect again.
        *slot = Some(conn);
        return if status != 200 {
            RequestOutcome::HttpStatus(status)
        } else if hasher.finalize().as_slice() == target.digest.as_slice() {
            RequestOutcome::Ok
        } else {
            RequestOutcome::WrongContent
        };
    }
}
