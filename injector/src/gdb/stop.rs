//! Stop replies: why the target stopped (`S`, `T` with its `n:r;` pairs),
//! or that it ended (`W` exit, `X` killed by a signal).

use std::fmt;

use super::hex::{self, HexError};

/// GDB's number for SIGINT: the target stopped because it was interrupted.
pub const SIGINT: u8 = 2;
/// GDB's number for SIGTRAP: a breakpoint, watchpoint or single step.
pub const SIGTRAP: u8 = 5;

/// Why a stop reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    /// The reply is empty.
    #[error("empty stop reply")]
    Empty,
    /// The first character is not `S`, `T`, `W`, `X` or `N`.
    #[error("{found:?} does not start a stop reply")]
    UnknownKind {
        /// The first character.
        found: char,
    },
    /// A field is not valid hex.
    #[error("field `{field}`: {source}")]
    Hex {
        /// Which field.
        field: String,
        /// Why.
        source: HexError,
    },
    /// A `T` pair has no `:`.
    #[error("pair {pair:?} has no `:`")]
    Malformed {
        /// The pair as received.
        pair: String,
    },
}

/// A thread as the protocol names it: `tid` or `p<pid>.<tid>`, hex; `-1`
/// means all threads. QEMU numbers one thread per vCPU, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadId {
    /// The process, when the multiprocess form was used.
    pub process: Option<i64>,
    /// The thread.
    pub thread: i64,
}

impl ThreadId {
    /// Parses `tid`, `-1` or `p<pid>.<tid>`.
    pub fn parse(text: &[u8]) -> Result<ThreadId, HexError> {
        fn id(text: &[u8]) -> Result<i64, HexError> {
            if text == b"-1" {
                return Ok(-1);
            }
            // Thread ids are positive hex numbers well below 2^63.
            hex::parse_u64(text).map(|v| v as i64)
        }
        match text.strip_prefix(b"p") {
            Some(rest) => {
                let (pid, tid) = match rest.iter().position(|&b| b == b'.') {
                    Some(dot) => (&rest[..dot], &rest[dot + 1..]),
                    None => (rest, &b"-1"[..]),
                };
                Ok(ThreadId { process: Some(id(pid)?), thread: id(tid)? })
            }
            None => Ok(ThreadId { process: None, thread: id(text)? }),
        }
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = |v: i64| if v < 0 { "-1".to_string() } else { format!("{v:x}") };
        match self.process {
            Some(p) => write!(f, "p{}.{}", id(p), id(self.thread)),
            None => f.write_str(&id(self.thread)),
        }
    }
}

/// What kind of access a watchpoint caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// `watch`: a write.
    Write,
    /// `rwatch`: a read.
    Read,
    /// `awatch`: a read or a write.
    Access,
}

/// The event behind a `T` stop, when the stub names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEvent {
    /// A watchpoint fired on this data address.
    Watchpoint {
        /// Access kind.
        kind: WatchKind,
        /// The watched address that was accessed.
        address: u64,
    },
    /// A software breakpoint (`swbreak`, only when the client announced it).
    SoftwareBreakpoint,
    /// A hardware breakpoint (`hwbreak`).
    HardwareBreakpoint,
}

/// A stop with a signal (`S` or `T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// GDB signal number ([`SIGTRAP`] for breakpoints and steps, [`SIGINT`]
    /// for interrupts and QMP `stop`).
    pub signal: u8,
    /// The thread (vCPU) that stopped.
    pub thread: Option<ThreadId>,
    /// The core it ran on.
    pub core: Option<u64>,
    /// Register values the stub sent along (`regnum`, little-endian bytes).
    pub registers: Vec<(u32, Vec<u8>)>,
    /// The event, when named.
    pub event: Option<StopEvent>,
    /// Pairs this parser does not interpret, as received.
    pub other: Vec<(String, String)>,
}

/// Why the target is no longer running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Stopped with a signal; it can be resumed.
    Signal(Stop),
    /// `W`: exited (for QEMU: the VM shut down).
    Exited {
        /// Exit status.
        status: u8,
        /// Process, when given.
        process: Option<u64>,
    },
    /// `X`: terminated by a signal.
    Terminated {
        /// Signal number.
        signal: u8,
        /// Process, when given.
        process: Option<u64>,
    },
    /// `N`: no thread is left to resume.
    NoResumed,
}

impl StopReason {
    /// The stop's signal, if it was a signal stop.
    pub fn signal(&self) -> Option<u8> {
        match self {
            StopReason::Signal(stop) => Some(stop.signal),
            _ => None,
        }
    }

    /// The thread that stopped, if named.
    pub fn thread(&self) -> Option<ThreadId> {
        match self {
            StopReason::Signal(stop) => stop.thread,
            _ => None,
        }
    }

    /// Whether the target is gone (exited or killed) rather than stopped.
    pub fn is_exit(&self) -> bool {
        matches!(self, StopReason::Exited { .. } | StopReason::Terminated { .. })
    }
}

fn hex_field(field: &str, text: &[u8]) -> Result<u64, StopError> {
    hex::parse_u64(text).map_err(|source| StopError::Hex { field: field.to_string(), source })
}

fn signal_field(text: &[u8]) -> Result<u8, StopError> {
    let digits = text.get(..2).unwrap_or(text);
    let value = hex_field("signal", digits)?;
    Ok(value as u8)
}

/// Whether a packet has the exact shape of a stop reply (`Sxx`, `Txx...`,
/// `Wxx[;...]`, `Xxx[;...]`). Used to recognise stop replies that arrive
/// unasked (QEMU sends `T02` when a client connects and when QMP stops the
/// VM) among replies to other requests, none of which can have this shape.
pub fn looks_like_stop(reply: &[u8]) -> bool {
    let two_hex = reply.len() >= 3 && hex::digit(reply[1]).is_some() && hex::digit(reply[2]).is_some();
    match reply.first() {
        Some(b'S') => two_hex && reply.len() == 3,
        Some(b'T') => two_hex,
        Some(b'W' | b'X') => two_hex && (reply.len() == 3 || reply[3] == b';'),
        _ => false,
    }
}

/// Parses a stop reply.
pub fn parse(reply: &[u8]) -> Result<StopReason, StopError> {
    let (&kind, rest) = reply.split_first().ok_or(StopError::Empty)?;
    match kind {
        b'S' => Ok(StopReason::Signal(Stop {
            signal: signal_field(rest)?,
            thread: None,
            core: None,
            registers: Vec::new(),
            event: None,
            other: Vec::new(),
        })),
        b'T' => parse_t(rest).map(StopReason::Signal),
        b'W' | b'X' => {
            let (code, process) = match rest.iter().position(|&b| b == b';') {
                Some(semi) => {
                    let tail = &rest[semi + 1..];
                    let pid = tail.strip_prefix(b"process:").unwrap_or(tail);
                    (&rest[..semi], Some(hex_field("process", pid)?))
                }
                None => (rest, None),
            };
            let code = hex_field("exit code", code)? as u8;
            Ok(if kind == b'W' {
                StopReason::Exited { status: code, process }
            } else {
                StopReason::Terminated { signal: code, process }
            })
        }
        b'N' => Ok(StopReason::NoResumed),
        other => Err(StopError::UnknownKind { found: char::from(other) }),
    }
}

fn parse_t(rest: &[u8]) -> Result<Stop, StopError> {
    let signal = signal_field(rest)?;
    let mut stop = Stop { signal, thread: None, core: None, registers: Vec::new(), event: None, other: Vec::new() };
    let pairs = rest.get(2..).unwrap_or_default();
    for pair in pairs.split(|&b| b == b';').filter(|p| !p.is_empty()) {
        let colon = pair
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| StopError::Malformed { pair: String::from_utf8_lossy(pair).into_owned() })?;
        let (name, value) = (&pair[..colon], &pair[colon + 1..]);
        let watch = |kind| -> Result<Option<StopEvent>, StopError> {
            Ok(Some(StopEvent::Watchpoint { kind, address: hex_field("watch address", value)? }))
        };
        match name {
            b"thread" => {
                stop.thread =
                    Some(ThreadId::parse(value).map_err(|source| StopError::Hex { field: "thread".into(), source })?)
            }
            b"core" => stop.core = Some(hex_field("core", value)?),
            b"watch" => stop.event = watch(WatchKind::Write)?,
            b"rwatch" => stop.event = watch(WatchKind::Read)?,
            b"awatch" => stop.event = watch(WatchKind::Access)?,
            b"swbreak" => stop.event = Some(StopEvent::SoftwareBreakpoint),
            b"hwbreak" => stop.event = Some(StopEvent::HardwareBreakpoint),
            // A name made only of hex digits is a register number.
            _ if name.iter().all(|&b| hex::digit(b).is_some()) => {
                let regnum = hex_field("register number", name)?;
                let bytes = hex::decode(value).map_err(|source| StopError::Hex {
                    field: format!("register {}", String::from_utf8_lossy(name)),
                    source,
                })?;
                stop.registers.push((regnum as u32, bytes));
            }
            _ => stop
                .other
                .push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned())),
        }
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qemu_stop_replies() {
        let StopReason::Signal(stop) = parse(b"T02thread:01;").unwrap() else { panic!() };
        assert_eq!((stop.signal, stop.thread), (SIGINT, Some(ThreadId { process: None, thread: 1 })));
        let StopReason::Signal(stop) = parse(b"T05thread:p01.02;watch:ffffffff82bfb145;").unwrap() else { panic!() };
        assert_eq!(stop.thread, Some(ThreadId { process: Some(1), thread: 2 }));
        assert_eq!(stop.event, Some(StopEvent::Watchpoint { kind: WatchKind::Write, address: 0xffff_ffff_82bf_b145 }));
        assert_eq!(parse(b"W00").unwrap(), StopReason::Exited { status: 0, process: None });
        assert_eq!(parse(b"X09;process:1a").unwrap(), StopReason::Terminated { signal: 9, process: Some(0x1a) });
        assert_eq!(parse(b"S05").unwrap().signal(), Some(SIGTRAP));
    }

    #[test]
    fn registers_and_unknown_pairs_are_kept() {
        let StopReason::Signal(stop) = parse(b"T0510:20a06281ffffffff;06:00;library:;swbreak:;").unwrap() else {
            panic!()
        };
        assert_eq!(stop.registers, [(0x10, vec![0x20, 0xa0, 0x62, 0x81, 0xff, 0xff, 0xff, 0xff]), (6, vec![0])]);
        assert_eq!(stop.other, [("library".to_string(), String::new())]);
        assert_eq!(stop.event, Some(StopEvent::SoftwareBreakpoint));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse(b"").unwrap_err(), StopError::Empty);
        assert_eq!(parse(b"OK").unwrap_err(), StopError::UnknownKind { found: 'O' });
        assert!(parse(b"T05thread").unwrap_err().to_string().contains("thread"));
        assert!(parse(b"T05core:zz;").unwrap_err().to_string().contains("core"));
    }

    #[test]
    fn stop_shapes_are_recognised_and_other_replies_are_not() {
        for stop in [&b"T02thread:01;"[..], b"S05", b"W00", b"X09;process:1"] {
            assert!(looks_like_stop(stop), "{}", String::from_utf8_lossy(stop));
        }
        for other in [&b"OK"[..], b"E14", b"", b"PacketSize=1000", b"Supported", b"0123abcd", b"l<xml/>", b"Wat"] {
            assert!(!looks_like_stop(other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn thread_ids_print_as_parsed() {
        for text in ["1", "p1.2", "-1", "p-1.-1", "p1a.ff"] {
            assert_eq!(ThreadId::parse(text.as_bytes()).unwrap().to_string(), text);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
            let _ = looks_like_stop(&bytes);
        }

        #[test]
        fn plausible_t_replies_never_panic(
            tail in proptest::collection::vec(prop::sample::select(b"0123456789abcdefT:;pthreadcorewatch.-".to_vec()), 0..120)
        ) {
            let mut reply = b"T05".to_vec();
            reply.extend_from_slice(&tail);
            let _ = parse(&reply);
        }
    }
}
