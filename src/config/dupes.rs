//! The duplicate-member check: a JSON object naming a member twice is refused (serde_json
//! would keep the last one, and another reader of the same text could keep the first).

use std::fmt;

use super::fields::{err, join};
use super::ConfigError;

/// Refuses what is not JSON, and a JSON object that names a member twice anywhere (maps
/// included): serde keeps the last one silently, so `"default_access": "closed"` followed by
/// `"default_access": "public"` would mean public.
pub(super) fn check_duplicate_members(bytes: &[u8]) -> Result<(), ConfigError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Walk<'a> {
        path: String,
        found: &'a RefCell<Option<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut i = 0usize;
            while a
                .next_element_seed(Walk {
                    path: format!("{}[{i}]", self.path),
                    found: self.found,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen: Vec<String> = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                let p = join(&self.path, &k);
                if seen.contains(&k) {
                    *self.found.borrow_mut() = Some(p);
                    return Err(A::Error::custom("duplicate member"));
                }
                m.next_value_seed(Walk {
                    path: p,
                    found: self.found,
                })?;
                seen.push(k);
            }
            Ok(())
        }
    }

    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (Err(_), Some(field)) => Err(err(
            &field,
            "is given twice (JSON keeps only the last one): say it once",
        )),
        (Err(e), None) => Err(err("", format!("not valid JSON: {e}"))),
        (Ok(()), _) => Ok(()),
    }
}
