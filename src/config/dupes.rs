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

    /// Where a value is, built into a path only when a duplicate is found (a path per member
    /// of 100,000 keys was most of the time of a large embedded store's check).
    #[derive(Clone, Copy)]
    enum At<'p> {
        Root,
        Index(&'p At<'p>, usize),
        Name(&'p At<'p>, &'p str),
    }
    impl At<'_> {
        fn path(&self) -> String {
            match self {
                At::Root => String::new(),
                At::Index(up, i) => format!("{}[{i}]", up.path()),
                At::Name(up, n) => join(&up.path(), n),
            }
        }
    }
    struct Walk<'a, 'p> {
        at: At<'p>,
        found: &'a RefCell<Option<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_, '_> {
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
                    at: At::Index(&self.at, i),
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
                if seen.contains(&k) {
                    *self.found.borrow_mut() = Some(At::Name(&self.at, &k).path());
                    return Err(A::Error::custom("duplicate member"));
                }
                m.next_value_seed(Walk {
                    at: At::Name(&self.at, &k),
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
        at: At::Root,
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
