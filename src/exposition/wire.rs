//! The protobuf wire format, written field by field as prost writes proto3
//! messages: fields in tag order, a scalar left out when it is zero, packed
//! repeated numbers, canonical varints. A nested message is written in place
//! and its length filled in when it ends (`begin` / `end`), so no message is
//! built as a struct nor its length computed twice.

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// A varint: 7 bits per byte, low bits first.
#[inline]
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes `varint` writes for `v`.
#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 significant bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

/// A `double` field, left out if zero (as `-0.0`).
#[inline]
pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
    if v != 0.0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `uint64` field, left out if zero.
#[inline]
pub fn uint64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, VARINT);
        varint(out, v);
    }
}

/// An `int64` (`int32`: sign-extended) field, left out if zero.
#[inline]
pub fn int64(out: &mut Vec<u8>, field: u32, v: i64) {
    uint64(out, field, v as u64);
}

/// ZigZag: small magnitudes, either sign, in few bytes (`sint32`, `sint64`).
#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A `sint32` or `sint64` field, left out if zero.
#[inline]
pub fn sint64(out: &mut Vec<u8>, field: u32, v: i64) {
    uint64(out, field, zigzag(v));
}

/// A packed `repeated sint64` field, left out if empty.
pub fn packed_sint64(out: &mut Vec<u8>, field: u32, values: &[i64]) {
    if values.is_empty() {
        return;
    }
    let len: usize = values.iter().map(|&v| varint_len(zigzag(v))).sum();
    key(out, field, LEN);
    varint(out, len as u64);
    for &v in values {
        varint(out, zigzag(v));
    }
}

/// A `string` or `bytes` field, left out if empty.
#[inline]
pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        key(out, field, LEN);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// Starts a nested message (field `field`); `end` with what this returns
/// once its fields are written.
#[inline]
pub fn begin(out: &mut Vec<u8>, field: u32) -> usize {
    key(out, field, LEN);
    begin_delimited(out)
}

/// Starts a length-delimited message without a key (a top-level message
/// of the `delimited` encoding).
#[inline]
pub fn begin_delimited(out: &mut Vec<u8>) -> usize {
    // One byte for the length: most nested messages are shorter than 128
    // bytes; a longer one moves its bytes up when it ends.
    out.push(0);
    out.len()
}

/// Ends the message begun at `start`: writes its length before it.
#[inline]
pub fn end(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let n = varint_len(len as u64);
    out.resize(out.len() + n - 1, 0);
    out.copy_within(start..start + len, start + n - 1);
    let mut v = len as u64;
    for b in &mut out[start - 1..start - 1 + n] {
        *b = v as u8 & 0x7f | if v >= 0x80 { 0x80 } else { 0 };
        v >>= 7;
    }
}

/// A `google.protobuf.Timestamp` field of `seconds` (Unix time).
pub fn timestamp(out: &mut Vec<u8>, field: u32, seconds: f64) {
    let whole = seconds.floor();
    let at = begin(out, field);
    int64(out, 1, whole as i64);
    int64(out, 2, ((seconds - whole) * 1e9) as i32 as i64);
    end(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn varints_and_lengths_are_prosts() {
        for v in [0u64, 1, 127, 128, 300, 16383, 16384, 1 << 35, u64::MAX] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            varint(&mut ours, v);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v));
        }
        for len in [0usize, 1, 127, 128, 200, 16383, 16384, 70000] {
            let mut ours = vec![9u8];
            let at = begin(&mut ours, 3);
            ours.extend(std::iter::repeat_n(7u8, len));
            end(&mut ours, at);
            let mut theirs = vec![9u8];
            prost::encoding::bytes::encode(3, &vec![7u8; len], &mut theirs);
            assert_eq!(ours, theirs, "{len}");
        }
    }

    #[test]
    fn a_timestamp_is_prosts() {
        for s in [0.0, 1000.5, 1.7e9 + 0.123, -1.25, 0.999_999_999_9] {
            let mut ours = Vec::new();
            timestamp(&mut ours, 3, s);
            let t = prost_types::Timestamp {
                seconds: s.floor() as i64,
                nanos: ((s - s.floor()) * 1e9) as i32,
            };
            let mut theirs = Vec::new();
            prost::encoding::message::encode(3, &t, &mut theirs);
            assert_eq!(ours, theirs, "{s}");
            assert_eq!(t.encoded_len() + 2, theirs.len());
        }
    }
}
