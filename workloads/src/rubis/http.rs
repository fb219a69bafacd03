//! One GET of a RUBiS page over a kept-alive HTTP/1.1 connection, returning
//! the status and body (the client reads links and markers from it).
//!
//! Like the static load generator's exchange, every way a request fails is
//! an [`RequestOutcome`], never an error: during an outage failures are the data.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::record::RequestOutcome;

/// Pages are a few kilobytes; a body beyond this is a broken page, and
/// reading it all would only cost memory.
const MAX_BODY: usize = 4 << 20;

/// An open connection and the task that drives its I/O.
pub(crate) struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropped after an error or a timeout, when its state is unknown:
        // close the socket now rather than leave it to a dead server.
        self.driver.abort();
    }
}

/// What came back for one GET.
pub(crate) struct Answer {
    /// `Ok` here only means "status 200, body read": the caller decides
    /// whether the content is right.
    pub outcome: RequestOutcome,
    /// The body (empty unless a complete answer came back).
    pub body: String,
    /// Body bytes received.
    pub bytes: u64,
}

impl Answer {
    fn failed(outcome: RequestOutcome, bytes: u64) -> Self {
        Self { outcome, body: String::new(), bytes }
    }
}

async fn connect(addr: SocketAddr) -> Result<Conn, RequestOutcome> {
    let stream = TcpStream::connect(addr).await.map_err(|_| RequestOutcome::ConnectError)?;
    // Small requests and answers: Nagle plus delayed ACKs would add tens of
    // milliseconds to each, blurring downtime measured in 100 ms bins.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| RequestOutcome::IoError)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

/// GETs `uri` from `addr`, reusing the connection in `slot` when it is still
/// open and leaving a reusable one there. The caller owns the deadline.
pub(crate) async fn get(slot: &mut Option<Conn>, addr: SocketAddr, host: &HeaderValue, uri: &Uri) -> Answer {
    loop {
        let kept = match slot.take() {
            Some(mut conn) => conn.sender.ready().await.is_ok().then_some(conn),
            None => None,
        };
        let fresh = kept.is_none();
        let mut conn = match kept {
            Some(conn) => conn,
            None => match connect(addr).await {
                Ok(conn) => conn,
                Err(outcome) => return Answer::failed(outcome, 0),
            },
        };
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = uri.clone();
        request.headers_mut().insert(HOST, host.clone());
        let response = match conn.sender.send_request(request).await {
            Ok(response) => response,
            // One retry on a new connection, as a browser does (RFC 9112, 9.3.1).
            Err(e) if !fresh && crate::loadgen::stale_connection(&e) => continue,
            Err(_) => return Answer::failed(RequestOutcome::IoError, 0),
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(chunk) = frame.data_ref() {
                        data.extend_from_slice(chunk);
                        if data.len() > MAX_BODY {
                            return Answer::failed(RequestOutcome::WrongContent, data.len() as u64);
                        }
                    }
                }
                Err(_) => return Answer::failed(RequestOutcome::IoError, data.len() as u64),
            }
        }
        *slot = Some(conn);
        let bytes = data.len() as u64;
        let outcome = if status == 200 { RequestOutcome::Ok } else { RequestOutcome::HttpStatus(status) };
        return Answer { outcome, body: String::from_utf8_lossy(&data).into_owned(), bytes };
    }
}
