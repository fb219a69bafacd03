//! One connection to a gdbstub (a unix socket, or TCP): sends packets and
//! waits for their acknowledgement, receives packets and acknowledges them,
//! resends on `-`, and bounds every wait by a deadline. It knows nothing of
//! what packets mean.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::packet::{self, Frame, FrameError, PacketReader};

/// How often a packet is resent after `-` (and how many damaged packets in a
/// row are answered with `-`) before the connection gives up.
pub const MAX_ATTEMPTS: u32 = 5;

/// Why talking to the stub failed at the transport level.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A socket call failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing (or not enough) arrived in time.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What was awaited: an acknowledgement, a reply, a stop.
        waiting_for: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The stub closed the connection (QEMU quit or another client took over).
    #[error("the stub closed the connection while we waited for {waiting_for}")]
    Closed {
        /// What was awaited.
        waiting_for: &'static str,
    },
    /// The stub answered `-` to every transmission.
    #[error("the stub rejected the packet {attempts} times (bad checksum on its side)")]
    Rejected {
        /// Transmissions made.
        attempts: u32,
    },
    /// Replies kept arriving damaged.
    #[error("{attempts} damaged replies in a row; last: {last}")]
    Corrupt {
        /// Damaged packets received.
        attempts: u32,
        /// Why the last one was rejected.
        last: FrameError,
    },
}

/// Where a gdbstub listens. Any process that can connect to a stub can
/// stop the guest, so a guest kfi runs has its stub on a unix socket in its
/// private run directory; TCP is for stubs elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Endpoint {
        Endpoint::Unix(path)
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Endpoint {
        Endpoint::Unix(path.to_path_buf())
    }
}

/// The byte stream under a connection.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Ends a connection from another thread: both directions are shut down,
/// so the owner's next read or write fails as if the stub had gone away.
#[derive(Debug)]
pub struct Severer(Stream);

impl Severer {
    /// Shuts the connection down.
    pub fn sever(&self) {
        let _ = match &self.0 {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(bytes),
            Stream::Tcp(s) => s.write_all(bytes),
        }
    }
}

/// A connection with the remote protocol's acknowledgement rules.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    reader: PacketReader,
    frames: VecDeque<Frame>,
    /// Packets that arrived while an acknowledgement was awaited.
    early: VecDeque<Frame>,
    ack_mode: bool,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects; over TCP with Nagle's algorithm off: every request is one
    /// small segment and waiting 40 ms for more data to coalesce would
    /// dominate the cost of an injection.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Connection, ConnError> {
        let io = |action| move |source| ConnError::Io { action, source };
        let stream = match endpoint {
            Endpoint::Unix(path) => {
                // A unix connect does not block for long: the listener
                // either is there or is not.
                let stream = UnixStream::connect(path).map_err(io("connect"))?;
                stream.set_write_timeout(Some(timeout)).map_err(io("set the write timeout"))?;
                Stream::Unix(stream)
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, timeout).map_err(io("connect"))?;
                stream.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
                stream.set_write_timeout(Some(timeout)).map_err(io("set the write timeout"))?;
                Stream::Tcp(stream)
            }
        };
        Ok(Connection {
            stream,
            reader: PacketReader::default(),
            frames: VecDeque::new(),
            early: VecDeque::new(),
            ack_mode: true,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A handle that ends this connection from another thread.
    pub fn severer(&self) -> std::io::Result<Severer> {
        self.stream.try_clone().map(Severer)
    }

    /// Whether `+`/`-` acknowledgements are exchanged (until `QStartNoAckMode`).
    pub fn ack_mode(&self) -> bool {
        self.ack_mode
    }

    /// Switches acknowledgements off after the stub accepted `QStartNoAckMode`.
    pub fn set_ack_mode(&mut self, on: bool) {
        self.ack_mode = on;
    }

    /// Sends the interrupt byte (outside any packet; never acknowledged).
    pub fn send_interrupt(&mut self) -> Result<(), ConnError> {
        self.write(&[packet::INTERRUPT], "send the interrupt byte")
    }

    /// Sends one packet; in ack mode waits for `+` and resends on `-`.
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<(), ConnError> {
        let wire = packet::frame(payload);
        let deadline = Instant::now() + timeout;
        let mut attempts = 1;
        self.write(&wire, "send a packet")?;
        if !self.ack_mode {
            return Ok(());
        }
        loop {
            match self.next_frame(deadline, timeout, "the acknowledgement")? {
                Frame::Ack => return Ok(()),
                Frame::Nack if attempts < MAX_ATTEMPTS => {
                    attempts += 1;
                    tracing::debug!(attempts, "gdb: stub sent `-`, resending");
                    self.write(&wire, "resend a packet")?;
                }
                Frame::Nack => return Err(ConnError::Rejected { attempts }),
                // A stop reply can overtake the ack of a request sent
                // just as the target stopped: keep it for `recv`.
                other => self.early.push_back(other),
            }
        }
    }

    /// Receives the next packet, acknowledging it in ack mode; damaged
    /// packets are answered with `-` so the stub resends them.
    pub fn recv(&mut self, timeout: Duration, waiting_for: &'static str) -> Result<Vec<u8>, ConnError> {
        let deadline = Instant::now() + timeout;
        let mut damaged = 0;
        loop {
            let frame = match self.early.pop_front() {
                Some(frame) => frame,
                None => self.next_frame(deadline, timeout, waiting_for)?,
            };
            match frame {
                Frame::Packet(payload) => {
                    if self.ack_mode {
                        self.write(b"+", "acknowledge a packet")?;
                    }
                    return Ok(payload);
                }
                Frame::Corrupt(last) => {
                    damaged += 1;
                    if !self.ack_mode || damaged >= MAX_ATTEMPTS {
                        return Err(ConnError::Corrupt { attempts: damaged, last });
                    }
                    tracing::debug!(%last, "gdb: damaged packet, asking for it again");
                    self.write(b"-", "ask for a resend")?;
                }
                // Stray acks (e.g. for a packet the stub re-sent) and
                // non-stop notifications carry nothing for all-stop mode.
                Frame::Ack | Frame::Nack | Frame::Notification(_) => {}
            }
        }
    }

    fn write(&mut self, bytes: &[u8], action: &'static str) -> Result<(), ConnError> {
        self.stream.write_all(bytes).map_err(|source| match source.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                ConnError::Closed { waiting_for: "a write to finish" }
            }
            _ => ConnError::Io { action, source },
        })
    }

    fn next_frame(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        waiting_for: &'static str,
    ) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout { waiting_for, after: timeout });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| ConnError::Io { action: "set the read timeout", source })?;
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(ConnError::Closed { waiting_for }),
                Ok(n) => self.reader.feed(&self.buf[..n], &mut self.frames),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ConnError::Timeout { waiting_for, after: timeout })
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ConnError::Closed { waiting_for }),
                Err(source) => return Err(ConnError::Io { action: "read from the stub", source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A scripted peer: for each expected incoming chunk, the bytes to answer.
    fn peer(script: Vec<(&'static [u8], &'static [u8])>) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            for (expect, answer) in script {
                let mut got = vec![0; expect.len()];
                s.read_exact(&mut got).unwrap();
                assert_eq!(got, expect, "peer got {:?}", String::from_utf8_lossy(&got));
                seen.extend_from_slice(&got);
                s.write_all(answer).unwrap();
            }
            // Collect whatever else the client sends until it hangs up.
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            seen.extend_from_slice(&rest);
            seen
        });
        (addr, handle)
    }

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn resends_after_nack_and_acks_replies() {
        let (addr, peer) = peer(vec![(b"$?#3f", b"-"), (b"$?#3f", b"+$S05#b8")]);
        let mut c = Connection::connect(&addr.into(), T).unwrap();
        c.send(b"?", T).unwrap();
        assert_eq!(c.recv(T, "a reply").unwrap(), b"S05");
        drop(c);
        assert!(peer.join().unwrap().ends_with(b"+"));
    }

    #[test]
    fn damaged_reply_is_nacked_then_accepted() {
        let (addr, peer) = peer(vec![(b"$g#67", b"+$00#00"), (b"-", b"$00#60")]);
        let mut c = Connection::connect(&addr.into(), T).unwrap();
        c.send(b"g", T).unwrap();
        assert_eq!(c.recv(T, "a reply").unwrap(), b"00");
        drop(c);
        peer.join().unwrap();
    }

    #[test]
    fn repeated_nacks_and_silence_are_errors() {
        let (addr, _peer) = peer(vec![(b"$?#3f", b"-"); MAX_ATTEMPTS as usize]);
        let mut c = Connection::connect(&addr.into(), T).unwrap();
        assert!(matches!(c.send(b"?", T), Err(ConnError::Rejected { attempts: MAX_ATTEMPTS })));
        let err = c.recv(Duration::from_millis(100), "a reply").unwrap_err();
        assert!(matches!(err, ConnError::Timeout { waiting_for: "a reply", .. }), "{err}");
    }

    #[test]
    fn a_unix_socket_carries_the_same_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gdb.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0; 5];
            s.read_exact(&mut got).unwrap();
            s.write_all(b"+$S05#b8").unwrap();
            let mut ack = [0; 1];
            s.read_exact(&mut ack).unwrap();
            assert_eq!(&ack, b"+", "the reply is acknowledged");
            got
        });
        let mut c = Connection::connect(&Endpoint::Unix(path), T).unwrap();
        c.send(b"?", T).unwrap();
        assert_eq!(c.recv(T, "a reply").unwrap(), b"S05");
        assert_eq!(&peer.join().unwrap(), b"$?#3f");
    }

    #[test]
    fn a_closed_connection_is_named() {
        let (addr, peer) = peer(vec![]);
        let mut c = Connection::connect(&addr.into(), T).unwrap();
        peer.join().unwrap();
        let err = c.recv(T, "a reply").unwrap_err();
        assert!(matches!(err, ConnError::Closed { waiting_for: "a reply" }), "{err}");
    }
}
