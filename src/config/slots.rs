//! `slots`: how much Envoy shared data keygate may hold (`crate::slots`).

use serde::Deserialize;

use super::fields::{bounded, err, Bound};
use super::ConfigError;
use crate::slots::{Geometry, Wanted, STATE_WAYS, VERDICT_WAYS};

/// `slots.verdicts`: cached verdicts (valid verdicts and revocation marks), in sets of 4.
pub const VERDICTS: Bound = Bound::new(crate::slots::DEFAULT_VERDICT_SLOTS, 4, 1 << 26);
/// `slots.states`: local rate-limit counts (one per owner under a policy), in sets of 8.
pub const STATES: Bound = Bound::new(crate::slots::DEFAULT_STATE_SLOTS, 8, 1 << 26);

#[derive(Deserialize)]
pub(super) struct RawSlots {
    pub(super) verdicts: Option<u64>,
    pub(super) states: Option<u64>,
    pub(super) seed: Option<String>,
}

pub(super) fn parse_slots(raw: Option<RawSlots>) -> Result<Wanted, ConfigError> {
    let Some(r) = raw else {
        return Ok(Wanted::default());
    };
    let verdicts = bounded("slots.verdicts", r.verdicts, VERDICTS)?;
    let states = bounded("slots.states", r.states, STATES)?;
    let seed = match r.seed {
        None => None,
        Some(s) => {
            let b = s.as_bytes();
            let ok = b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit);
            let n = u128::from_str_radix(&s, 16)
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| {
                    err(
                    "slots.seed",
                    "expected 32 hex digits (tests only: a known seed lets clients aim collisions)",
                )
                })?;
            Some(((n >> 64) as u64, n as u64))
        }
    };
    Ok(Wanted {
        verdicts: Geometry::of(verdicts, VERDICT_WAYS),
        states: Geometry::of(states, STATE_WAYS),
        seed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::p;

    #[test]
    fn slots_default_bounds_and_seed() {
        let c = p("{}").unwrap();
        assert_eq!(c.slots.verdicts.slots(), 32_768);
        assert_eq!(c.slots.states.slots(), 131_072);
        assert!(c.slots.seed.is_none());
        let c = p(
            r#"{"slots":{"verdicts":1000,"states":100,"seed":"000102030405060708090a0b0c0d0e0f"}}"#,
        )
        .unwrap();
        assert_eq!((c.slots.verdicts.sets, c.slots.verdicts.ways), (250, 4));
        assert_eq!((c.slots.states.sets, c.slots.states.ways), (13, 8));
        assert_eq!(
            c.slots.seed,
            Some((0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f))
        );
        // what the defaults can hold: within 64 MiB with token buckets; a rolling window of
        // 1,000 needs its own sizing
        let d = p(r#"{"key_service":{"cluster":"k"},"rate_limit":{"plans":{"a":{"requests":5}}}}"#)
            .unwrap();
        assert!(
            d.shared_data_bound() <= 64 << 20,
            "{}",
            d.shared_data_bound()
        );
        let w =
            p(r#"{"rate_limit":{"plans":{"a":{"requests":1000,"algorithm":"rolling_window"}}}}"#)
                .unwrap();
        assert!(w.shared_data_bound() > 64 << 20);
        for bad in [
            r#"{"slots":{"verdicts":0}}"#,
            r#"{"slots":{"states":1}}"#,
            r#"{"slots":{"seed":"xyz"}}"#,
            r#"{"slots":{"seed":"+0102030405060708090a0b0c0d0e0f"}}"#,
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
