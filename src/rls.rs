//! The few protobuf messages of Envoy's rate-limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), encoded and decoded by hand,
//! with gRPC's length-prefixed framing. Pure and bounded: an answer that does not decode is a
//! failure of the engine ([`Garbage`]), never a verdict.
//!
//! Request (`RateLimitRequest`): `domain` (1, string), `descriptors` (2, repeated
//! `RateLimitDescriptor { entries (1, repeated Entry { key 1, value 2 }) }`), `hits_addend`
//! (3, uint32). Response (`RateLimitResponse`): `overall_code` (1, enum: 1 OK, 2 OVER_LIMIT),
//! `statuses` (2, repeated `DescriptorStatus { code 1, current_limit 2 { requests_per_unit 1,
//! unit 2, name 3 }, limit_remaining 3, duration_until_reset 4 { seconds 1, nanos 2 } }`); every
//! other field is skipped.

/// The gRPC method keygate calls, as an HTTP/2 `:path`.
pub const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Answers larger than this are garbage (a real one is well under 1 KB).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A gRPC-framed `RateLimitRequest` with one descriptor of `entries` (key, value), asking for
/// `hits` tokens (always sent, also 1: engines treat an absent `hits_addend` as 1 anyway).
pub fn encode_request(domain: &str, entries: &[(&str, &str)], hits: u32) -> Vec<u8> {
    let mut descriptor = Vec::with_capacity(64);
    let mut entry = Vec::with_capacity(48);
    for (k, v) in entries {
        entry.clear();
        len_field(&mut entry, 1, k.as_bytes());
        len_field(&mut entry, 2, v.as_bytes());
        len_field(&mut descriptor, 1, &entry);
    }
    let mut msg = Vec::with_capacity(descriptor.len() + domain.len() + 16);
    len_field(&mut msg, 1, domain.as_bytes());
    len_field(&mut msg, 2, &descriptor);
    if hits > 0 {
        varint(&mut msg, 3 << 3);
        varint(&mut msg, u64::from(hits));
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

/// What the engine said about the request's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The engine's limit (`current_limit.requests_per_unit`), when it names one.
    pub limit: Option<u64>,
    /// The limit's unit in seconds (second, minute, hour, day), when known.
    pub unit_s: Option<u64>,
    pub remaining: u64,
    /// Milliseconds until the engine's window resets, when it says.
    pub reset_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub over_limit: bool,
    /// The first descriptor's status (keygate sends one descriptor); engines that fill no
    /// statuses (Limitador without headers) leave it `None`.
    pub status: Option<Status>,
}

/// The engine answered something that is not a `RateLimitResponse` keygate can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Garbage(pub &'static str);

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, Garbage> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.at).ok_or(Garbage("truncated varint"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(Garbage("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Garbage> {
        let n = usize::try_from(self.varint()?).map_err(|_| Garbage("length too large"))?;
        let end = self.at.checked_add(n).ok_or(Garbage("length too large"))?;
        let s = self.b.get(self.at..end).ok_or(Garbage("truncated field"))?;
        self.at = end;
        Ok(s)
    }

    /// The next (field, wire type), or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, Garbage> {
        if self.done() {
            return Ok(None);
        }
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(Garbage("field number 0"));
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), Garbage> {
        let n = match wire {
            0 => return self.varint().map(|_| ()),
            1 => 8,
            2 => return self.bytes().map(|_| ()),
            5 => 4,
            _ => return Err(Garbage("unsupported wire type")),
        };
        let end = self.at.checked_add(n).ok_or(Garbage("truncated field"))?;
        if end > self.b.len() {
            return Err(Garbage("truncated field"));
        }
        self.at = end;
        Ok(())
    }
}

fn expect(wire: u8, want: u8) -> Result<(), Garbage> {
    if wire == want {
        Ok(())
    } else {
        Err(Garbage("unexpected wire type"))
    }
}

fn unit_seconds(unit: u64) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3600),
        4 => Some(86_400),
        7 => Some(604_800),
        _ => None,
    }
}

fn decode_status(b: &[u8]) -> Result<Status, Garbage> {
    let mut r = Reader { b, at: 0 };
    let mut s = Status {
        limit: None,
        unit_s: None,
        remaining: 0,
        reset_ms: None,
    };
    while let Some((field, wire)) = r.key()? {
        match field {
            2 => {
                expect(wire, 2)?;
                let mut l = Reader {
                    b: r.bytes()?,
                    at: 0,
                };
                while let Some((f, w)) = l.key()? {
                    match f {
                        1 => {
                            expect(w, 0)?;
                            let v = l.varint()?;
                            s.limit = (v > 0).then_some(v);
                        }
                        2 => {
                            expect(w, 0)?;
                            s.unit_s = unit_seconds(l.varint()?);
                        }
                        _ => l.skip(w)?,
                    }
                }
            }
            3 => {
                expect(wire, 0)?;
                s.remaining = r.varint()?;
            }
            4 => {
                expect(wire, 2)?;
                let mut d = Reader {
                    b: r.bytes()?,
                    at: 0,
                };
                let (mut secs, mut nanos) = (0u64, 0u64);
                while let Some((f, w)) = d.key()? {
                    match f {
                        1 => {
                            expect(w, 0)?;
                            // int64 on the wire: a negative duration is garbage
                            secs = d.varint()?;
                            if secs > 1 << 40 {
                                return Err(Garbage("duration out of range"));
                            }
                        }
                        2 => {
                            expect(w, 0)?;
                            nanos = d.varint()?;
                            if nanos >= 1_000_000_000 {
                                return Err(Garbage("duration out of range"));
                            }
                        }
                        _ => d.skip(w)?,
                    }
                }
                s.reset_ms = Some(secs * 1000 + nanos.div_ceil(1_000_000));
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(s)
}

/// The leading decimal of a header value (`"30, 30;w=60"` -> 30).
fn leading_number(v: &[u8]) -> Option<u64> {
    let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(v.get(..digits)?).ok()?.parse().ok()
}

/// What the engine's `response_headers_to_add` say (Limitador fills no statuses, but with
/// `--rate-limit-headers DRAFT_VERSION_03` it sends `X-RateLimit-Limit: 30, 30;w=60`,
/// `X-RateLimit-Remaining`, `X-RateLimit-Reset` in seconds): (limit, window s, remaining, reset s).
#[derive(Default)]
struct HeaderStatus {
    limit: Option<u64>,
    window_s: Option<u64>,
    remaining: Option<u64>,
    reset_s: Option<u64>,
}

fn decode_header(b: &[u8], h: &mut HeaderStatus) -> Result<(), Garbage> {
    let mut r = Reader { b, at: 0 };
    let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
    while let Some((f, w)) = r.key()? {
        match f {
            1 => {
                expect(w, 2)?;
                key = r.bytes()?;
            }
            2 | 3 => {
                expect(w, 2)?;
                value = r.bytes()?;
            }
            _ => r.skip(w)?,
        }
    }
    if key.eq_ignore_ascii_case(b"x-ratelimit-limit") {
        h.limit = leading_number(value);
        h.window_s = value
            .windows(2)
            .position(|p| p == b"w=")
            .and_then(|i| value.get(i + 2..))
            .and_then(leading_number);
    } else if key.eq_ignore_ascii_case(b"x-ratelimit-remaining") {
        h.remaining = leading_number(value);
    } else if key.eq_ignore_ascii_case(b"x-ratelimit-reset") {
        h.reset_s = leading_number(value);
    }
    Ok(())
}

/// Decodes a gRPC-framed `RateLimitResponse` (one uncompressed message, nothing after it).
pub fn decode_response(framed: &[u8]) -> Result<Answer, Garbage> {
    if framed.len() > MAX_RESPONSE_BYTES {
        return Err(Garbage("answer too large"));
    }
    let (head, msg) = framed.split_at_checked(5).ok_or(Garbage("no gRPC frame"))?;
    if head[0] != 0 {
        return Err(Garbage("compressed or unknown frame"));
    }
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if n != msg.len() {
        return Err(Garbage("frame length mismatch"));
    }
    let mut r = Reader { b: msg, at: 0 };
    let mut code = 0u64;
    let mut status = None;
    let mut headers = HeaderStatus::default();
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                expect(wire, 0)?;
                code = r.varint()?;
            }
            2 => {
                expect(wire, 2)?;
                let s = decode_status(r.bytes()?)?;
                if status.is_none() {
                    status = Some(s);
                }
            }
            3 => {
                expect(wire, 2)?;
                decode_header(r.bytes()?, &mut headers)?;
            }
            _ => r.skip(wire)?,
        }
    }
    let over_limit = match code {
        1 => false,
        2 => true,
        _ => return Err(Garbage("overall_code is neither OK nor OVER_LIMIT")),
    };
    // no status: the engine's rate-limit headers, when it sent them
    if status.is_none() {
        if let Some(remaining) = headers.remaining {
            status = Some(Status {
                limit: headers.limit,
                unit_s: headers.window_s,
                remaining,
                reset_ms: headers.reset_s.map(|s| s.saturating_mul(1000)),
            });
        }
    }
    Ok(Answer { over_limit, status })
}

/// The gRPC status of a call's answer: `grpc-status` from the trailers, or from the headers of
/// a trailers-only answer. `None` when neither has one (not a gRPC answer).
pub fn grpc_status(headers: Option<&[u8]>, trailers: Option<&[u8]>) -> Option<u32> {
    let v = trailers.or(headers)?;
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn request_bytes_are_protobuf() {
        let b = encode_request("keygate", &[("plan", "tiny"), ("key_id", "k1")], 5);
        assert_eq!(b[0], 0);
        assert_eq!(
            u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize,
            b.len() - 5
        );
        let want: Vec<u8> = [
            &[0x0a, 7][..],
            b"keygate",
            &[0x12, 28],
            &[0x0a, 12, 0x0a, 4],
            b"plan",
            &[0x12, 4],
            b"tiny",
            &[0x0a, 12, 0x0a, 6],
            b"key_id",
            &[0x12, 2],
            b"k1",
            &[0x18, 5],
        ]
        .concat();
        assert_eq!(&b[5..], &want[..]);
    }

    #[test]
    fn big_hits_use_multi_byte_varints() {
        let b = encode_request("d", &[("a", "b")], 300);
        assert!(b.ends_with(&[0x18, 0xac, 0x02]));
    }

    #[test]
    fn decodes_ok_and_over_limit_with_status() {
        // overall_code OK, one status: code OK, limit 30/minute, remaining 29, reset 41.5 s
        let limit = [0x08, 30, 0x10, 2, 0x1a, 4, b'w', b'=', b'6', b'0'];
        let dur = [0x08, 41, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01]; // 500,000,000 ns
        let mut st = vec![0x08, 1, 0x12, limit.len() as u8];
        st.extend_from_slice(&limit);
        st.extend_from_slice(&[0x18, 29, 0x22, dur.len() as u8]);
        st.extend_from_slice(&dur);
        let mut msg = vec![0x08, 1, 0x12, st.len() as u8];
        msg.extend_from_slice(&st);
        // an unknown field (raw_body, 5) is skipped
        msg.extend_from_slice(&[0x2a, 2, b'h', b'i']);
        let a = decode_response(&frame(&msg)).unwrap();
        assert!(!a.over_limit);
        let s = a.status.unwrap();
        assert_eq!(s.limit, Some(30));
        assert_eq!(s.unit_s, Some(60));
        assert_eq!(s.remaining, 29);
        assert_eq!(s.reset_ms, Some(41_500));

        let a = decode_response(&frame(&[0x08, 2])).unwrap();
        assert!(a.over_limit);
        assert_eq!(a.status, None);
    }

    #[test]
    fn limitador_headers_stand_in_for_statuses() {
        fn header(k: &str, v: &str) -> Vec<u8> {
            let mut h = vec![0x0a, k.len() as u8];
            h.extend_from_slice(k.as_bytes());
            h.extend_from_slice(&[0x12, v.len() as u8]);
            h.extend_from_slice(v.as_bytes());
            let mut f = vec![0x1a, h.len() as u8];
            f.extend_from_slice(&h);
            f
        }
        let mut msg = vec![0x08, 1];
        msg.extend(header("X-RateLimit-Limit", "30, 30;w=60"));
        msg.extend(header("X-RateLimit-Remaining", "12"));
        msg.extend(header("X-RateLimit-Reset", "41"));
        let s = decode_response(&frame(&msg)).unwrap().status.unwrap();
        assert_eq!(
            s,
            Status {
                limit: Some(30),
                unit_s: Some(60),
                remaining: 12,
                reset_ms: Some(41_000)
            }
        );
        // without a remaining count, no status
        let mut msg = vec![0x08, 1];
        msg.extend(header("x-ratelimit-limit", "30"));
        assert_eq!(decode_response(&frame(&msg)).unwrap().status, None);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b""[..],
            &[0, 0, 0, 0],
            &[1, 0, 0, 0, 2, 0x08, 1],               // compressed
            &[0, 0, 0, 0, 3, 0x08, 1],               // length mismatch
            &[0, 0, 0, 0, 0],                        // no overall_code (UNKNOWN)
            &[0, 0, 0, 0, 2, 0x08, 3],               // an unknown code
            &[0, 0, 0, 0, 2, 0x0a, 1],               // code with a wrong wire type
            &[0, 0, 0, 0, 3, 0x08, 0x81, 0x81],      // truncated varint
            &[0, 0, 0, 0, 4, 0x08, 1, 0x12, 5],      // truncated status
            &[0, 0, 0, 0, 2, 0x0f, 1],               // wire type 7
            &[0, 0, 0, 0, 2, 0x00, 1],               // field 0
            b"<html>503 Service Unavailable</html>", // not gRPC at all
        ] {
            assert!(decode_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_status_from_trailers_or_headers() {
        assert_eq!(grpc_status(Some(b"14"), None), Some(14));
        assert_eq!(grpc_status(Some(b"14"), Some(b"0")), Some(0));
        assert_eq!(grpc_status(None, None), None);
        assert_eq!(grpc_status(None, Some(b"x")), None);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_response(&b);
            let _ = decode_response(&frame(&b));
        }

        #[test]
        fn request_roundtrips_its_lengths(d in "[a-z]{0,20}", k in "[a-z_]{1,20}", v in "\\PC{0,300}", hits in 0u32..1_000_000) {
            let b = encode_request(&d, &[(&k, &v)], hits);
            prop_assert_eq!(u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize, b.len() - 5);
        }
    }
}
