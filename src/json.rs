//! Serde plumbing shared by the configuration (`config`) and the key-service contract
//! (`contract`): both parse JSON into a `serde_json::Value`, decode that into
//! `#[derive(Deserialize)]` structs through [`ValueDe`], and check values by hand.
//!
//! - [`ValueDe`] is a deserializer over a parsed `Value` whose type errors read like JSON
//!   (`expected a boolean, got a string`) and that gives a struct only an object (a derived struct
//!   also takes an array of its fields in order, which no configuration or answer means).
//!   serde_json's own `Value` deserializer words errors in serde's terms (sequence, map, u64) and
//!   its error type formats floats, which alone is ~20 KB of wasm.
//! - [`Loose`] takes any JSON value and says what it was, for fields that may be of several types
//!   (`false` or a string, a number or a timestamp) or that an answer may get wrong harmlessly.
//! - [`decode_tracked`] decodes with the path of a failing field and the paths of unknown fields,
//!   both as `a.b[2].c`, found by `ValueDe` itself as it walks (see there why not by wrapping it).
//! - [`field_paths`] lists every field a type knows, from the field lists serde derives.

use std::cell::RefCell;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde::Deserialize;
use serde_json::Value;

/// What went wrong, in one line and in JSON's words (`expected a boolean, got a string`).
#[derive(Debug)]
pub struct DeError(pub String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError(format!("expected {exp}, got {}", unexpected_name(unexp)))
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        match unexp {
            Unexpected::Str(s) => DeError(format!("expected {exp}, got `{s}`")),
            other => Self::invalid_type(other, exp),
        }
    }
}

/// The JSON type of what serde did not expect (never its value: no float formatting).
fn unexpected_name(u: Unexpected<'_>) -> &'static str {
    match u {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Unit | Unexpected::Option => "null",
        Unexpected::Seq => "an array",
        Unexpected::Map => "an object",
        _ => "another value",
    }
}

/// The JSON type of a value, as messages say it.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(expected: &str, got: &Value) -> DeError {
    DeError(format!("expected {expected}, got {}", type_name(got)))
}

/// A deserializer over a parsed JSON value. Each typed request takes only its JSON type: a
/// struct or map only an object, a list only an array, a `u64` only a non-negative whole number.
#[derive(Clone, Copy)]
pub struct ValueDe<'a> {
    v: &'a Value,
    /// Where the value sits, when `decode_tracked` wants paths (`None`: `decode`, no cost).
    at: Option<&'a At<'a>>,
}

/// What `decode_tracked` learns while it walks: the path of every field no struct knows, and of
/// the value a failure was raised in.
#[derive(Default)]
struct Track {
    unknown: RefCell<Vec<String>>,
    failed_at: RefCell<Option<String>>,
}

/// A place in the document: a member or an element of its parent (the root has none).
struct At<'a> {
    parent: Option<&'a At<'a>>,
    seg: Seg<'a>,
    track: &'a Track,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl At<'_> {
    /// A failure was raised here or below: the deepest place that sees it keeps it.
    fn failed(&self) {
        let mut f = self.track.failed_at.borrow_mut();
        if f.is_none() {
            *f = Some(self.path());
        }
    }

    /// A member no struct knows.
    fn ignored(&self) {
        self.track.unknown.borrow_mut().push(self.path());
    }

    /// `a.b[2].c`, as the configuration's messages name fields.
    fn path(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        if let Some(p) = self.parent {
            p.write(out);
        }
        match self.seg {
            Seg::Root => {}
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(itoa::Buffer::new().format(i));
                out.push(']');
            }
        }
    }
}

impl<'a> ValueDe<'a> {
    pub fn new(v: &'a Value) -> Self {
        ValueDe { v, at: None }
    }

    /// Decodes the child at `seg` with `seed`; a failure inside it is placed at the deepest
    /// child that saw it.
    fn child<'de, S: DeserializeSeed<'de>>(
        at: Option<&At<'_>>,
        seg: Seg<'_>,
        v: &Value,
        seed: S,
    ) -> Result<S::Value, DeError> {
        let Some(parent) = at else {
            return seed.deserialize(ValueDe { v, at: None });
        };
        let here = At {
            parent: Some(parent),
            seg,
            track: parent.track,
        };
        let r = seed.deserialize(ValueDe { v, at: Some(&here) });
        if r.is_err() {
            here.failed();
        }
        r
    }
}

impl<'de> Deserializer<'de> for ValueDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => v.visit_u64(u),
                (None, Some(i)) => v.visit_i64(i),
                (None, None) => v.visit_f64(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => v.visit_str(s),
            Value::Array(a) => v.visit_seq(SeqDe {
                items: a.iter().enumerate(),
                at: self.at,
            }),
            Value::Object(m) => v.visit_map(MapDe {
                entries: m.iter(),
                value: None,
                at: self.at,
            }),
        }
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Bool(b) => v.visit_bool(*b),
            other => Err(wrong("a boolean", other)),
        }
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Number(n) => match n.as_u64() {
                Some(u) => v.visit_u64(u),
                None => Err(DeError("expected a non-negative whole number".into())),
            },
            other => Err(wrong("a number", other)),
        }
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => v.visit_i64(i),
                None => Err(DeError("expected a whole number".into())),
            },
            other => Err(wrong("a number", other)),
        }
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::String(s) => v.visit_str(s),
            other => Err(wrong("a string", other)),
        }
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Array(a) => v.visit_seq(SeqDe {
                items: a.iter().enumerate(),
                at: self.at,
            }),
            other => Err(wrong("an array", other)),
        }
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.v {
            Value::Object(m) => v.visit_map(MapDe {
                entries: m.iter(),
                value: None,
                at: self.at,
            }),
            other => Err(wrong("an object", other)),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }
    /// What derived structs call for a member they do not know: noted when tracking.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if let Some(at) = self.at {
            at.ignored();
        }
        v.visit_unit()
    }
    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
    at: Option<&'a At<'a>>,
}

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        match self.items.next() {
            Some((i, v)) => ValueDe::child(self.at, Seg::Index(i), v, seed).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    entries: serde_json::map::Iter<'a>,
    value: Option<(&'a str, &'a Value)>,
    at: Option<&'a At<'a>>,
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some((k, v));
                seed.deserialize(StrDeserializer::new(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        match self.value.take() {
            Some((k, v)) => ValueDe::child(self.at, Seg::Key(k), v, seed),
            None => Err(DeError("a value without a key".into())),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Any JSON value, reduced to what a lenient field needs (null is `None` around it). The members
/// of an array or object read here are skipped, so `decode_tracked` counts them as unknown fields:
/// no configuration field takes one (each refuses it with its own message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loose {
    Bool(bool),
    U64(u64),
    Str(String),
    /// Anything else, by its JSON type: "a number" (negative or fractional), "an array",
    /// "an object", "null".
    Other(&'static str),
}

impl Loose {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Loose::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// The JSON type, as the configuration's messages say it ("expected a string, got a number").
    pub fn type_name(&self) -> &'static str {
        match self {
            Loose::Bool(_) => "a boolean",
            Loose::U64(_) => "a number",
            Loose::Str(_) => "a string",
            Loose::Other(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Loose, E> {
                Ok(Loose::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Loose, E> {
                Ok(u64::try_from(n).map_or(Loose::Other("a number"), Loose::U64))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose::Other("a number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Loose, E> {
                Ok(Loose::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Loose, E> {
                Ok(Loose::Str(s))
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Loose, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("an object"))
            }
            // only the field recorder calls this
            fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Loose, D::Error> {
                Ok(Loose::Other("null"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object read as its members, in key order (a parsed object's order): the maps of the
/// configuration (plans, problem kinds, members, resources) without a `BTreeMap` per value type.
#[derive(Debug)]
pub struct Entries<T>(pub Vec<(String, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<T>, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(e) = m.next_entry()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A decoding failure: the field's path (`""` for the whole document) and the reason.
#[derive(Debug)]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

/// Decodes `doc` as `T` (for answers, where a failure needs no name).
pub fn decode<T: DeserializeOwned>(doc: &Value) -> Result<T, DeError> {
    T::deserialize(ValueDe::new(doc))
}

/// Decodes `doc` as `T`, with the path of a failing field (`a.b[2].c`, `""` for the document)
/// and, in `unknown`, the path of every member no struct knows (in key order: a parsed object's
/// members are sorted). The walk is `ValueDe`'s own: it knows where each value sits, so a failure
/// and an ignored member are placed without wrapping the deserializer (serde_path_to_error and
/// serde_ignored did that, for 29 KB more wasm and the same messages).
pub fn decode_tracked<T: DeserializeOwned>(
    doc: &Value,
    unknown: &mut Vec<String>,
) -> Result<T, DecodeError> {
    let track = Track::default();
    let root = At {
        parent: None,
        seg: Seg::Root,
        track: &track,
    };
    let decoded = T::deserialize(ValueDe {
        v: doc,
        at: Some(&root),
    });
    unknown.append(&mut track.unknown.borrow_mut());
    decoded.map_err(|e| DecodeError {
        path: track.failed_at.borrow_mut().take().unwrap_or_default(),
        message: e.0,
    })
}

/// Every field `T` knows, as `a.b[].c` paths (`<name>` for a map's keys), found by deserializing
/// `T` from a recorder that notes the `fields` serde derives pass to `deserialize_struct`, and
/// then gives each of them a value. A type read with `deserialize_any` gets `visit_newtype_struct`
/// from it: one with an object form decodes that from the recorder; others answer any value. An error (a type that does neither) comes back as `Err`.
pub fn field_paths<T: DeserializeOwned>() -> Result<Vec<String>, String> {
    let out = RefCell::new(Vec::new());
    T::deserialize(Recorder {
        path: String::new(),
        out: &out,
    })
    .map_err(|e| e.to_string())?;
    let mut v = out.into_inner();
    v.sort();
    v.dedup();
    Ok(v)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

struct Recorder<'a> {
    path: String,
    out: &'a RefCell<Vec<String>>,
}

type RecError = de::value::Error;

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = RecError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, RecError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, RecError> {
        for f in fields {
            self.out.borrow_mut().push(join(&self.path, f));
        }
        v.visit_map(RecMap {
            keys: fields,
            path: self.path,
            out: self.out,
            next: 0,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_map(RecMap {
            keys: &["<name>"],
            path: self.path,
            out: self.out,
            next: 0,
        })
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_seq(RecSeq(Some(Recorder {
            path: format!("{}[]", self.path),
            out: self.out,
        })))
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_some(self)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_bool(false)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_u64(1)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_str("")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RecError> {
        v.visit_unit()
    }
    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier
    }
}

struct RecMap<'a> {
    keys: &'static [&'static str],
    path: String,
    out: &'a RefCell<Vec<String>>,
    next: usize,
}

impl<'de> MapAccess<'de> for RecMap<'_> {
    type Error = RecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, RecError> {
        match self.keys.get(self.next) {
            None => Ok(None),
            Some(k) => seed.deserialize(StrDeserializer::new(k)).map(Some),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, RecError> {
        let key = self.keys.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        seed.deserialize(Recorder {
            path: join(&self.path, key),
            out: self.out,
        })
    }
}

struct RecSeq<'a>(Option<Recorder<'a>>);

impl<'de> SeqAccess<'de> for RecSeq<'_> {
    type Error = RecError;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, RecError> {
        match self.0.take() {
            None => Ok(None),
            Some(r) => seed.deserialize(r).map(Some),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Inner {
        n: Option<u64>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Outer {
        list: Option<Vec<Inner>>,
        map: Option<Entries<Inner>>,
        any: Option<Loose>,
    }

    fn doc(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn fails(s: &str) -> (String, String) {
        let e = decode_tracked::<Outer>(&doc(s), &mut Vec::new()).unwrap_err();
        (e.path, e.message)
    }

    #[test]
    fn paths_of_errors_and_unknown_fields() {
        let mut unknown = Vec::new();
        let e = decode_tracked::<Outer>(
            &doc(r#"{"x":1,"list":[{"n":1,"y":[2]},{"n":"2"}]}"#),
            &mut unknown,
        )
        .unwrap_err();
        assert_eq!(e.path, "list[1].n");
        assert_eq!(e.message, "expected a number, got a string");
        // a parsed object's members come in key order: "x" is after the error
        assert_eq!(unknown, ["list[0].y"]);
        let f = |p: &str, m: &str| (p.to_string(), m.to_string());
        assert_eq!(fails("[1]"), f("", "expected an object, got an array"));
        assert_eq!(
            fails(r#"{"list":[[1]]}"#),
            f("list[0]", "expected an object, got an array")
        );
        assert_eq!(
            fails(r#"{"list":{}}"#),
            f("list", "expected an array, got an object")
        );
        assert_eq!(
            fails(r#"{"map":{"a":{"n":-1}}}"#),
            f("map.a.n", "expected a non-negative whole number")
        );
        let mut unknown = Vec::new();
        decode_tracked::<Outer>(
            &doc(r#"{"map":{"a":{"z":1}},"any":[1,{"q":2}]}"#),
            &mut unknown,
        )
        .unwrap();
        assert!(unknown.iter().any(|u| u == "map.a.z"), "{unknown:?}");
    }

    #[test]
    fn loose_says_what_it_got() {
        let l = |s: &str| decode::<Loose>(&doc(s)).unwrap();
        assert_eq!(l("5"), Loose::U64(5));
        assert_eq!(l("-5"), Loose::Other("a number"));
        assert_eq!(l("5.5"), Loose::Other("a number"));
        assert_eq!(l(r#""x""#), Loose::Str("x".into()));
        assert_eq!(l("[1,{}]"), Loose::Other("an array"));
        assert_eq!(l(r#"{"a":[]}"#), Loose::Other("an object"));
        assert_eq!(l("false"), Loose::Bool(false));
    }

    #[test]
    fn fields_of_a_type() {
        assert_eq!(
            field_paths::<Outer>().unwrap(),
            ["any", "list", "list[].n", "map", "map.<name>.n"]
        );
    }
}
