//! Hex codecs of the remote protocol: byte strings (`m` replies, `M`
//! payloads, `qRcmd` text), big-endian numbers (addresses, lengths, signal
//! and register numbers) and little-endian register values.

/// Why a hex field could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A byte string has an odd number of digits.
    #[error("odd number of hex digits ({len})")]
    OddLength {
        /// Number of digits seen.
        len: usize,
    },
    /// A character is not a hex digit.
    #[error("{found:?} at position {at} is not a hex digit")]
    BadDigit {
        /// Position in the field.
        at: usize,
        /// The offending character.
        found: char,
    },
    /// A number has no digits at all.
    #[error("empty number")]
    Empty,
    /// A number does not fit in 64 bits.
    #[error("number {text:?} does not fit in 64 bits")]
    Overflow {
        /// The field as received (lossy UTF-8).
        text: String,
    },
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Value of one hex digit, either case.
pub fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of `bytes`, two digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Decodes a hex byte string (two digits per byte, either case).
pub fn decode(text: &[u8]) -> Result<Vec<u8>, HexError> {
    if !text.len().is_multiple_of(2) {
        return Err(HexError::OddLength { len: text.len() });
    }
    let bad = |at: usize| HexError::BadDigit { at, found: char::from(text[at]) };
    text.chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            let hi = digit(pair[0]).ok_or_else(|| bad(2 * i))?;
            let lo = digit(pair[1]).ok_or_else(|| bad(2 * i + 1))?;
            Ok(hi << 4 | lo)
        })
        .collect()
}

/// Parses a big-endian hex number as the protocol writes addresses, lengths
/// and signal numbers. An optional `0x` prefix is accepted because QEMU's
/// `qqemu.sstep` reply carries one.
pub fn parse_u64(text: &[u8]) -> Result<u64, HexError> {
    let digits = text.strip_prefix(b"0x").unwrap_or(text);
    if digits.is_empty() {
        return Err(HexError::Empty);
    }
    let mut value: u64 = 0;
    for (at, &c) in digits.iter().enumerate() {
        let d = digit(c).ok_or(HexError::BadDigit { at, found: char::from(c) })?;
        value = value
            .checked_mul(16)
            .map(|v| v | u64::from(d))
            .ok_or_else(|| HexError::Overflow { text: String::from_utf8_lossy(text).into_owned() })?;
    }
    Ok(value)
}

/// The low `width` bytes of `value`, little-endian (x86 register order), as hex.
pub fn encode_le(value: u64, width: usize) -> String {
    let bytes = value.to_le_bytes();
    let mut buf = vec![0u8; width];
    let n = width.min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    encode(&buf)
}

/// Reads up to the first 8 bytes of a little-endian value; wider registers
/// (x87, SSE) keep their upper bytes in the raw block.
pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_and_prefixes() {
        assert_eq!(parse_u64(b"ffffffff81000000").unwrap(), 0xffff_ffff_8100_0000);
        assert_eq!(parse_u64(b"0x7").unwrap(), 7);
        assert_eq!(parse_u64(b"").unwrap_err(), HexError::Empty);
        assert!(matches!(parse_u64(b"1ffffffffffffffff"), Err(HexError::Overflow { .. })));
        assert!(matches!(parse_u64(b"12g"), Err(HexError::BadDigit { at: 2, found: 'g' })));
    }

    #[test]
    fn bytes_errors_name_the_position() {
        assert_eq!(decode(b"abc").unwrap_err(), HexError::OddLength { len: 3 });
        assert_eq!(decode(b"0x").unwrap_err(), HexError::BadDigit { at: 1, found: 'x' });
        assert_eq!(decode(b"4C69").unwrap(), b"Li");
    }

    #[test]
    fn little_endian_register_values() {
        assert_eq!(encode_le(0x286, 4), "86020000");
        assert_eq!(le_u64(&[0x20, 0xa0, 0x62, 0x81, 0xff, 0xff, 0xff, 0xff]), 0xffff_ffff_8162_a020);
        assert_eq!(le_u64(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9]), 1);
    }

    proptest! {
        #[test]
        fn bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(decode(encode(&bytes).as_bytes()).unwrap(), bytes.clone());
            prop_assert_eq!(decode(encode(&bytes).to_uppercase().as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn numbers_round_trip(value in any::<u64>()) {
            prop_assert_eq!(parse_u64(format!("{value:x}").as_bytes()).unwrap(), value);
            prop_assert_eq!(parse_u64(format!("0x{value:X}").as_bytes()).unwrap(), value);
        }

        #[test]
        fn le_values_round_trip(value in any::<u64>(), width in 1usize..=8) {
            let mask = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
            let bytes = decode(encode_le(value, width).as_bytes()).unwrap();
            prop_assert_eq!(le_u64(&bytes), value & mask);
        }

        #[test]
        fn garbage_never_panics(text in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&text);
            let _ = parse_u64(&text);
        }
    }
}
