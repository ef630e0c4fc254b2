//! `rls::{decode_response, encode_request, grpc_status}`: the rate-limit engine's answers, which
//! come from outside. Properties:
//! - `decode_response` on arbitrary bytes never panics, and accepts only one uncompressed gRPC
//!   frame whose length is exact, no larger than `MAX_RESPONSE_BYTES`;
//! - a well-formed answer built from the input (overall code, limit, unit, remaining, reset,
//!   unknown fields between them) decodes to exactly what was encoded;
//! - `encode_request` frames what it encodes (the length prefix is the message's length) for
//!   arbitrary domains and entries;
//! - `grpc_status` never panics and reads only a whole decimal number.
//!
//! Input: the whole input is tried as an answer; its first bytes also pick the fields of a
//! well-formed one, and its text a request's domain and entries.

use keygate::rls::{decode_response, encode_request, grpc_status, MAX_RESPONSE_BYTES};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// One input.
pub fn run(data: &[u8]) {
    // arbitrary bytes
    if let Ok(a) = decode_response(data) {
        assert!(data.len() <= MAX_RESPONSE_BYTES && data.len() >= 5 && data[0] == 0);
        let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(
            n,
            data.len() - 5,
            "accepted a frame whose length is not exact"
        );
        if let Some(s) = a.status {
            assert!(s.limit != Some(0), "a zero limit is no limit");
        }
    }
    let _ = grpc_status(Some(data), None);
    if let Some(s) = grpc_status(None, Some(data)) {
        let text = std::str::from_utf8(data).map(str::trim).unwrap_or_default();
        assert_eq!(text.parse::<u32>().ok(), Some(s));
    }

    // a well-formed answer, every field chosen by the input
    let over = data.first().is_some_and(|b| b & 1 == 1);
    let limit = u64_at(data, 1) % 1_000_000 + 1;
    let unit = u64::from(data.get(9).copied().unwrap_or(2) % 5); // 0..=4: unknown..day
    let remaining = u64_at(data, 10) >> (data.get(18).copied().unwrap_or(0) % 64);
    let secs = u64_at(data, 19) % (1 << 40);
    let nanos = u64_at(data, 27) % 1_000_000_000;
    let noise = data.get(35).copied().unwrap_or(0);
    let mut cur = Vec::new();
    field_varint(&mut cur, 1, limit);
    field_varint(&mut cur, 2, unit);
    field_bytes(&mut cur, 3, b"name");
    let mut dur = Vec::new();
    field_varint(&mut dur, 1, secs);
    field_varint(&mut dur, 2, nanos);
    let mut status = Vec::new();
    field_varint(&mut status, 1, if over { 2 } else { 1 });
    field_bytes(&mut status, 2, &cur);
    if noise & 1 == 1 {
        field_bytes(&mut status, 9, &data[..data.len().min(40)]); // a field keygate skips
    }
    field_varint(&mut status, 3, remaining);
    field_bytes(&mut status, 4, &dur);
    let mut msg = Vec::new();
    if noise & 2 == 2 {
        field_varint(&mut msg, 7, 12345); // unknown varint field before the rest
    }
    field_varint(&mut msg, 1, if over { 2 } else { 1 });
    field_bytes(&mut msg, 2, &status);
    let a = decode_response(&frame(&msg))
        .unwrap_or_else(|g| panic!("a well-formed answer was garbage: {}", g.0));
    assert_eq!(a.over_limit, over);
    let s = a.status.unwrap_or_else(|| panic!("the status was lost"));
    assert_eq!(s.limit, Some(limit));
    assert_eq!(
        s.unit_s,
        match unit {
            1 => Some(1),
            2 => Some(60),
            3 => Some(3600),
            4 => Some(86_400),
            _ => None,
        }
    );
    assert_eq!(s.remaining, remaining);
    assert_eq!(s.reset_ms, Some(secs * 1000 + nanos.div_ceil(1_000_000)));
    // a truncated frame is never accepted
    let framed = frame(&msg);
    assert!(decode_response(&framed[..framed.len() - 1]).is_err());

    // requests: framing is exact whatever the names
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let domain = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let entries: Vec<(&str, &str)> = rest
        .chunks(2)
        .map(|c| (c[0], *c.get(1).unwrap_or(&"")))
        .collect();
    let req = encode_request(domain, &entries, u32::from(noise));
    assert_eq!(req[0], 0);
    let n = u32::from_be_bytes([req[1], req[2], req[3], req[4]]) as usize;
    assert_eq!(n, req.len() - 5);
}
