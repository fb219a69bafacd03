//! Packet framing of the remote serial protocol: `$payload#xx` with a
//! modulo-256 checksum, `}` escaping, run-length decoding, and an
//! incremental reader that turns an arbitrary byte stream from the stub
//! into frames (packets, acks, notifications, corrupt packets) without ever
//! panicking or growing without bound.

use std::collections::VecDeque;

use super::hex;

/// The escape byte: the next byte is the original XOR 0x20.
pub const ESCAPE: u8 = b'}';
/// The run-length marker: the previous byte repeats `count - 29` more times.
pub const RUN: u8 = b'*';
/// The interrupt byte, sent outside any packet.
pub const INTERRUPT: u8 = 0x03;

/// The largest packet body the reader accepts. QEMU 7.2 never sends more
/// than 4 KiB; the bound keeps a confused peer from exhausting memory.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// Why a received frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The checksum after `#` does not match the body.
    #[error("checksum mismatch: the packet says {sent:02x}, its body sums to {computed:02x} (body starts {start:?})")]
    BadChecksum {
        /// Checksum the stub sent.
        sent: u8,
        /// Checksum of the body as received.
        computed: u8,
        /// The first bytes of the body, for the error message.
        start: String,
    },
    /// The two characters after `#` are not hex digits.
    #[error("checksum {digits:?} is not two hex digits (body starts {start:?})")]
    BadChecksumDigits {
        /// The characters received.
        digits: String,
        /// The first bytes of the body.
        start: String,
    },
    /// The body is longer than the reader's limit.
    #[error("packet body longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The body ends with a lone `}`.
    #[error("body ends inside an escape sequence")]
    DanglingEscape,
    /// A `*` with no byte before it to repeat.
    #[error("run-length marker at position {at} has no byte to repeat")]
    RunWithoutByte {
        /// Position of the `*` in the body.
        at: usize,
    },
    /// A `*` at the end of the body, or followed by an invalid count.
    #[error("run-length marker at position {at} has no valid count")]
    BadRunCount {
        /// Position of the `*` in the body.
        at: usize,
    },
}

/// One thing read from the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+`: the previous packet arrived intact.
    Ack,
    /// `-`: the previous packet arrived damaged; send it again.
    Nack,
    /// `$...#xx`: a packet, its body already run-length decoded and unescaped.
    Packet(Vec<u8>),
    /// `%...#xx`: an asynchronous notification (non-stop mode), decoded.
    Notification(Vec<u8>),
    /// A packet that arrived damaged (in ack mode the peer resends it after `-`).
    Corrupt(FrameError),
}

/// Modulo-256 sum of the bytes, as carried after `#`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Whether a payload byte must be escaped: the frame delimiters, the escape
/// byte itself, and the run-length marker.
pub fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'#' | b'$' | ESCAPE | RUN)
}

/// Escapes a payload for the wire.
pub fn escape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    for &b in payload {
        if needs_escape(b) {
            out.push(ESCAPE);
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    }
    out
}

/// A complete packet for the wire: `$`, escaped payload, `#`, checksum.
/// Outgoing packets are never run-length encoded: stubs must accept plain
/// packets and the saving on our short requests would be nil.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let body = escape(payload);
    let sum = checksum(&body);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(&body);
    out.push(b'#');
    out.extend_from_slice(hex::encode(&[sum]).as_bytes());
    out
}

/// Decodes a received body (between `$` and `#`): expands run-length
/// encoding and removes escapes in one pass.
///
/// `X*c` repeats the last decoded byte `c - 29` more times. Escapes are
/// removed for every packet, not only binary ones: a `}` cannot occur in
/// the hex and text replies, so unescaping them is a no-op.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            ESCAPE => {
                let &next = body.get(i + 1).ok_or(FrameError::DanglingEscape)?;
                out.push(next ^ 0x20);
                i += 2;
            }
            RUN => {
                let &last = out.last().ok_or(FrameError::RunWithoutByte { at: i })?;
                let &count = body.get(i + 1).ok_or(FrameError::BadRunCount { at: i })?;
                // Counts are printable characters: ' ' + 3 (repeat 3) upwards;
                // GDB's own decoder accepts any count above 29 up to '~'.
                if !(30..=126).contains(&count) {
                    return Err(FrameError::BadRunCount { at: i });
                }
                out.extend(std::iter::repeat_n(last, usize::from(count - 29)));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The start of a body for error messages.
fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(32)]).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: waiting for `$`, `%`, `+` or `-`.
    Idle,
    /// Inside a body.
    Body,
    /// After `#`, waiting for the first checksum digit.
    Check1,
    /// Waiting for the second checksum digit.
    Check2(u8),
}

/// Incremental frame reader: push bytes as they arrive, take frames out.
#[derive(Debug)]
pub struct PacketReader {
    state: State,
    notification: bool,
    body: Vec<u8>,
    overflowed: bool,
    limit: usize,
    skipped: usize,
}

impl Default for PacketReader {
    fn default() -> Self {
        PacketReader::new(DEFAULT_LIMIT)
    }
}

impl PacketReader {
    /// A reader that rejects bodies longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        PacketReader { state: State::Idle, notification: false, body: Vec::new(), overflowed: false, limit, skipped: 0 }
    }

    /// Bytes ignored between frames so far (line noise, stray characters).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Feeds a chunk of bytes, appending every completed frame to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Frame>) {
        for &b in bytes {
            if let Some(frame) = self.push(b) {
                out.push_back(frame);
            }
        }
    }

    /// Feeds one byte; returns a frame when this byte completed one.
    pub fn push(&mut self, byte: u8) -> Option<Frame> {
        match self.state {
            State::Idle => match byte {
                b'+' => Some(Frame::Ack),
                b'-' => Some(Frame::Nack),
                b'$' | b'%' => {
                    self.start(byte == b'%');
                    None
                }
                _ => {
                    self.skipped += 1;
                    None
                }
            },
            State::Body => {
                match byte {
                    b'#' => self.state = State::Check1,
                    // A raw `$` cannot occur inside a body (it is escaped):
                    // the previous packet was cut off, so start over as GDB does.
                    b'$' => {
                        tracing::debug!(partial = %preview(&self.body), "gdb: packet start inside a packet; resyncing");
                        self.start(false);
                    }
                    _ if self.body.len() >= self.limit => self.overflowed = true,
                    _ => self.body.push(byte),
                }
                None
            }
            State::Check1 => {
                self.state = State::Check2(byte);
                None
            }
            State::Check2(first) => {
                self.state = State::Idle;
                Some(self.finish(first, byte))
            }
        }
    }

    fn start(&mut self, notification: bool) {
        self.state = State::Body;
        self.notification = notification;
        self.body.clear();
        self.overflowed = false;
    }

    fn finish(&mut self, d1: u8, d2: u8) -> Frame {
        let body = std::mem::take(&mut self.body);
        if self.overflowed {
            return Frame::Corrupt(FrameError::TooLong { limit: self.limit });
        }
        let (Some(hi), Some(lo)) = (hex::digit(d1), hex::digit(d2)) else {
            return Frame::Corrupt(FrameError::BadChecksumDigits {
                digits: String::from_utf8_lossy(&[d1, d2]).into_owned(),
                start: preview(&body),
            });
        };
        let sent = hi << 4 | lo;
        let computed = checksum(&body);
        if sent != computed {
            return Frame::Corrupt(FrameError::BadChecksum { sent, computed, start: preview(&body) });
        }
        match decode_body(&body) {
            Ok(payload) if self.notification => Frame::Notification(payload),
            Ok(payload) => Frame::Packet(payload),
            Err(e) => Frame::Corrupt(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8]) -> Vec<Frame> {
        let mut reader = PacketReader::default();
        let mut out = VecDeque::new();
        reader.feed(bytes, &mut out);
        out.into()
    }

    /// Run-length encodes an already escaped body the way a stub may:
    /// only runs of plain bytes, never counts 6 or 7 (which would put `#`
    /// or `$` on the wire), at most 97 repeats per marker.
    fn rle(escaped: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < escaped.len() {
            let b = escaped[i];
            if b == ESCAPE {
                out.extend_from_slice(&escaped[i..i + 2]);
                i += 2;
                continue;
            }
            let mut run = 1;
            while i + run < escaped.len() && escaped[i + run] == b {
                run += 1;
            }
            out.push(b);
            let mut extra = run - 1;
            while extra >= 3 {
                let n = extra.min(97);
                let n = if n == 6 || n == 7 { 5 } else { n };
                out.push(RUN);
                out.push(n as u8 + 29);
                extra -= n;
            }
            out.extend(std::iter::repeat_n(b, extra));
            i += run;
        }
        out
    }

    fn wire(body: &[u8]) -> Vec<u8> {
        let mut out = vec![b'$'];
        out.extend_from_slice(body);
        out.push(b'#');
        out.extend_from_slice(hex::encode(&[checksum(body)]).as_bytes());
        out
    }

    #[test]
    fn known_qemu_replies_decode() {
        assert_eq!(read_all(b"+$OK#9a"), [Frame::Ack, Frame::Packet(b"OK".to_vec())]);
        assert_eq!(read_all(b"$T02thread:01;#04"), [Frame::Packet(b"T02thread:01;".to_vec())]);
        assert_eq!(read_all(b"$#00"), [Frame::Packet(Vec::new())]);
    }

    #[test]
    fn run_length_example_from_the_manual() {
        // "0* " is "0000": a space is 32, so three more zeros.
        assert_eq!(decode_body(b"0* ").unwrap(), b"0000");
        assert_eq!(read_all(&wire(b"0* ")), [Frame::Packet(b"0000".to_vec())]);
    }

    #[test]
    fn escapes_all_four_special_bytes() {
        assert_eq!(escape(b"a#b$c}d*e"), b"a}\x03b}\x04c}]d}\x0ae");
        assert_eq!(frame(b"m0,1"), b"$m0,1#fa");
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        assert!(matches!(
            read_all(b"$OK#00")[0],
            Frame::Corrupt(FrameError::BadChecksum { sent: 0, computed: 0x9a, .. })
        ));
        assert!(matches!(read_all(b"$OK#zz")[0], Frame::Corrupt(FrameError::BadChecksumDigits { .. })));
        assert_eq!(decode_body(b"*!"), Err(FrameError::RunWithoutByte { at: 0 }));
        assert_eq!(decode_body(b"a*"), Err(FrameError::BadRunCount { at: 1 }));
        assert_eq!(decode_body(b"a}"), Err(FrameError::DanglingEscape));
        let mut reader = PacketReader::new(4);
        let mut out = VecDeque::new();
        reader.feed(&wire(b"0123456789"), &mut out);
        reader.feed(b"+", &mut out);
        assert_eq!(out, [Frame::Corrupt(FrameError::TooLong { limit: 4 }), Frame::Ack]);
    }

    #[test]
    fn noise_between_frames_is_skipped_and_a_restart_resyncs() {
        let mut bytes = b"\r\nnoise".to_vec();
        bytes.extend_from_slice(b"$trunc");
        bytes.extend_from_slice(&wire(b"OK"));
        bytes.extend_from_slice(b"%Stop:T05;#");
        bytes.extend_from_slice(hex::encode(&[checksum(b"Stop:T05;")]).as_bytes());
        assert_eq!(read_all(&bytes), [Frame::Packet(b"OK".to_vec()), Frame::Notification(b"Stop:T05;".to_vec())]);
    }

    proptest! {
        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..600), split in 0usize..700) {
            let wire = frame(&payload);
            // Arbitrary TCP segmentation must not matter.
            let split = split.min(wire.len());
            let mut reader = PacketReader::default();
            let mut out = VecDeque::new();
            reader.feed(&wire[..split], &mut out);
            reader.feed(&wire[split..], &mut out);
            prop_assert_eq!(Vec::from(out), vec![Frame::Packet(payload)]);
        }

        #[test]
        fn run_length_round_trips(
            runs in proptest::collection::vec((any::<u8>(), 1usize..200), 0..20)
        ) {
            let payload: Vec<u8> = runs.iter().flat_map(|&(b, n)| std::iter::repeat_n(b, n)).collect();
            let body = rle(&escape(&payload));
            prop_assert!(!body.contains(&b'#') && !body.contains(&b'$'));
            prop_assert_eq!(decode_body(&body).unwrap(), payload.clone());
            prop_assert_eq!(read_all(&wire(&body)), vec![Frame::Packet(payload)]);
        }

        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut reader = PacketReader::new(256);
            let mut out = VecDeque::new();
            reader.feed(&bytes, &mut out);
            for frame in out {
                if let Frame::Packet(p) = frame {
                    prop_assert!(p.len() <= 256 * 97);
                }
            }
            let _ = decode_body(&bytes);
        }

        #[test]
        fn streams_of_protocol_characters_never_panic(
            bytes in proptest::collection::vec(prop::sample::select(b"$#%+-}*0a9T:;".to_vec()), 0..2000)
        ) {
            let mut reader = PacketReader::new(64);
            let mut out = VecDeque::new();
            reader.feed(&bytes, &mut out);
        }
    }
}
