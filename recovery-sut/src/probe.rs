//! Service probes: is the guest's web server giving the correct answer?
//!
//! A plain HTTP/1.0 GET over std sockets: the readiness check must not
//! depend on an async runtime, and its only job is "status 200 and the
//! exact bytes we put in the image".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::guest::Doc;

/// Why one probe did not get the correct answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("malformed HTTP answer")]
    Malformed,
    /// A status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body differs from the document.
    #[error("wrong content: {got_len} bytes with SHA-256 {got}, expected {want_len} bytes with {want}")]
    Content {
        /// Digest received.
        got: String,
        /// Length received.
        got_len: usize,
        /// Digest expected.
        want: String,
        /// Length expected.
        want_len: u64,
    },
}

/// Status and body of one HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The write numbers on the guest's data disk (`/data/acked`, one per
/// line, the agent's acknowledged writes), read over HTTP.
pub fn acked_on_disk(addr: SocketAddr, timeout: Duration) -> Result<Vec<u64>, ProbeError> {
    let answer = http_get(addr, "/data/acked", timeout)?;
    if answer.status != 200 {
        return Err(ProbeError::Status(answer.status));
    }
    Ok(String::from_utf8_lossy(&answer.body).lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// One HTTP/1.0 GET.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server may answer and close as soon as it has read the
    // request line, and a second write would then fail with EPIPE.
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: kfi-probe\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Splits a raw HTTP/1.x response into status and body.
pub fn parse_response(raw: &[u8]) -> Result<HttpAnswer, ProbeError> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(ProbeError::Malformed)?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| ProbeError::Malformed)?;
    let status_line = head.lines().next().ok_or(ProbeError::Malformed)?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ProbeError::Malformed);
    }
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or(ProbeError::Malformed)?;
    Ok(HttpAnswer { status, body: raw[head_end + 4..].to_vec() })
}

/// Fetches a document and checks status and content.
pub fn check_doc(addr: SocketAddr, doc: &Doc, timeout: Duration) -> Result<(), ProbeError> {
    let answer = http_get(addr, &doc.path, timeout)?;
    if answer.status != 200 {
        return Err(ProbeError::Status(answer.status));
    }
    let got = hex::encode(Sha256::digest(&answer.body));
    if got != doc.sha256 {
        return Err(ProbeError::Content {
            got,
            got_len: answer.body.len(),
            want: doc.sha256.clone(),
            want_len: doc.size,
        });
    }
    Ok(())
}

/// How long one readiness attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Polls until a correct answer or the deadline; returns the last failure
/// on timeout.
pub fn wait_correct(
    addr: SocketAddr,
    doc: &Doc,
    deadline: Instant,
    mut alive: impl FnMut() -> bool,
) -> Result<Instant, ProbeError> {
    let started = Instant::now();
    loop {
        // Short attempts: before the guest's network is up, QEMU's user-mode
        // stack accepts the host connection and then retransmits its SYN to
        // the guest for seconds; a fresh attempt is quicker than waiting.
        let sent = Instant::now();
        let attempt = check_doc(addr, doc, ATTEMPT_TIMEOUT);
        let now = Instant::now();
        tracing::debug!(
            since_start = (sent - started).as_secs_f64(),
            took = (now - sent).as_secs_f64(),
            ok = attempt.is_ok(),
            error = attempt.as_ref().err().map(|e| e.to_string()),
            "readiness attempt"
        );
        match attempt {
            Ok(()) => return Ok(now),
            Err(e) if now >= deadline || !alive() => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_status_and_body() {
        let a = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hi"[..]));
        assert!(matches!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n"), Ok(HttpAnswer { status: 404, .. })));
        assert!(matches!(parse_response(b"SSH-2.0\r\n\r\n"), Err(ProbeError::Malformed)));
        assert!(matches!(parse_response(b"HTTP/1.0 200 OK\r\n"), Err(ProbeError::Malformed)));
    }

    #[test]
    fn checks_content_against_a_real_local_server() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for body in [&b"right"[..], &b"wrong"[..]] {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "client closed mid-request");
                    request.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
                s.write_all(body).unwrap();
            }
        });
        let doc = Doc { path: "/x".into(), size: 5, sha256: hex::encode(Sha256::digest(b"right")) };
        check_doc(addr, &doc, Duration::from_secs(5)).unwrap();
        let err = check_doc(addr, &doc, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ProbeError::Content { got_len: 5, .. }), "{err}");
        server.join().unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_response(&bytes);
        }
    }
}
