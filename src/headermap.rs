//! The proxy-wasm header-map wire format: a `u32` count, then a (key length, value length) `u32`
//! pair per header, then each key and value followed by a NUL, all little-endian. The host hands
//! request headers over in it and takes local-reply and call headers in it (`host::abi`). Pure
//! and tested natively: a round trip keeps every pair, and no byte sequence makes it panic.

fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Decodes a header map: calls `each` per (name, value) pair. Names are lower-case tokens in
/// Envoy; a name that is not ASCII is skipped; values stay raw bytes. A truncated or lying buffer
/// ends the walk (no panic, no read past the end).
pub fn decode<'a>(b: &'a [u8], mut each: impl FnMut(&'a str, &'a [u8])) {
    let Some(count) = read_u32(b, 0) else {
        return;
    };
    let mut sizes = 4usize;
    let mut data = count.saturating_mul(8).saturating_add(4);
    for _ in 0..count {
        let (Some(kl), Some(vl)) = (read_u32(b, sizes), read_u32(b, sizes + 4)) else {
            break;
        };
        sizes += 8;
        let Some(k) = data.checked_add(kl).and_then(|end| b.get(data..end)) else {
            break;
        };
        data = data.saturating_add(kl).saturating_add(1);
        let Some(v) = data.checked_add(vl).and_then(|end| b.get(data..end)) else {
            break;
        };
        data = data.saturating_add(vl).saturating_add(1);
        if k.is_ascii() {
            // SAFETY: ASCII is valid UTF-8 (checked just above, word-at-a-time: cheaper than
            // `from_utf8` for eight-odd short names a request). The one `unsafe` of the core.
            #[allow(unsafe_code)] // from_utf8_unchecked on bytes checked to be ASCII
            each(unsafe { std::str::from_utf8_unchecked(k) }, v);
        }
    }
}

/// Requests with more headers than this spill the pairs into a `Vec`.
const STACK_PAIRS: usize = 32;

/// Calls `f` with the (name, value) pairs of header map `raw`, borrowed from it: in an array on
/// the stack for up to `STACK_PAIRS` headers (no allocation a request), else in a `Vec`.
pub fn with_pairs<R>(raw: &[u8], f: impl FnOnce(&[(&str, &[u8])]) -> R) -> R {
    let mut stack: [(&str, &[u8]); STACK_PAIRS] = [("", &[]); STACK_PAIRS];
    let mut n = 0usize;
    let mut spill: Vec<(&str, &[u8])> = Vec::new();
    decode(raw, |k, v| match stack.get_mut(n) {
        Some(slot) if spill.is_empty() => {
            *slot = (k, v);
            n += 1;
        }
        _ => {
            if spill.is_empty() {
                spill.extend_from_slice(&stack);
            }
            spill.push((k, v));
        }
    });
    if spill.is_empty() {
        f(stack.get(..n).unwrap_or_default())
    } else {
        f(&spill)
    }
}

/// Encodes pairs in the wire format.
pub fn encode<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.len() + v.as_ref().len() + 2;
    }
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_ref());
        b.push(0);
    }
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pairs(b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        decode(b, |k, v| out.push((k.to_string(), v.to_vec())));
        out
    }

    #[test]
    fn known_bytes() {
        let b = encode(&[(":path", "/a"), ("x", "")]);
        assert_eq!(
            b,
            [
                &2u32.to_le_bytes()[..],
                &5u32.to_le_bytes(),
                &2u32.to_le_bytes(),
                &1u32.to_le_bytes(),
                &0u32.to_le_bytes(),
                b":path\0/a\0x\0\0"
            ]
            .concat()
        );
        assert_eq!(
            pairs(&b),
            [(":path".into(), b"/a".to_vec()), ("x".into(), vec![])]
        );
        // a count that lies, lengths past the end, an empty buffer: the walk stops
        assert!(pairs(&u32::MAX.to_le_bytes()).is_empty());
        let mut lying = encode(&[("k", "v")]);
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pairs(&lying).is_empty());
        assert!(pairs(&[]).is_empty());
    }

    proptest::proptest! {
        /// Whatever the pairs (ASCII names, any value bytes, NULs included), a round trip gives
        /// them back in order.
        #[test]
        fn round_trip(ps in proptest::collection::vec(
            ("[ -~]{0,12}", proptest::collection::vec(proptest::num::u8::ANY, 0..20)), 0..40)) {
            let refs: Vec<(&str, &[u8])> = ps.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let back = pairs(&encode(&refs));
            let want: Vec<(String, Vec<u8>)> = ps.clone();
            proptest::prop_assert_eq!(back, want);
        }

        /// No byte sequence panics or reads past the end.
        #[test]
        fn any_bytes(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = pairs(&b);
        }
    }
}
