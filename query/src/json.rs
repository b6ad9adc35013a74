//! One-pass extraction of a few named top-level fields from a JSON object.
//!
//! The query path reads every event's value, so this borrows: keys are compared in
//! place, strings without escapes are returned as slices of the input, undeclared
//! fields (and nested values) are skipped without being built. A value that is not a
//! JSON object is an error; a missing field is `None`.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;

/// A top-level scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// A string (borrowed unless it had escapes).
    Str(Cow<'a, str>),
    /// An integer that fits i64.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// true / false.
    Bool(bool),
    /// null, an object or an array.
    Other,
}

impl Scalar<'_> {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Fills `out[i]` with the value of field `names[i]` (`None` when absent). Returns
/// false when `value` is not a JSON object.
pub fn extract<'a>(value: &'a [u8], names: &[&str], out: &mut [Option<Scalar<'a>>]) -> bool {
    assert_eq!(names.len(), out.len(), "one slot per field");
    out.iter_mut().for_each(|slot| *slot = None);
    let mut deserializer = serde_json::Deserializer::from_slice(value);
    let parsed =
        ObjectSeed { names, out: &mut *out }.deserialize(&mut deserializer).and_then(|()| deserializer.end());
    if parsed.is_err() {
        out.iter_mut().for_each(|slot| *slot = None);
    }
    parsed.is_ok()
}

struct ObjectSeed<'n, 'o, 'a> {
    names: &'n [&'n str],
    out: &'o mut [Option<Scalar<'a>>],
}

impl<'a> DeserializeSeed<'a> for ObjectSeed<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'a> Visitor<'a> for ObjectSeed<'_, '_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(index) = map.next_key_seed(KeySeed { names: self.names })? {
            match index {
                Some(i) => self.out[i] = Some(map.next_value_seed(ScalarSeed)?),
                None => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        Ok(())
    }
}

struct KeySeed<'n> {
    names: &'n [&'n str],
}

impl<'a> DeserializeSeed<'a> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'a>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'a> Visitor<'a> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.names.iter().position(|name| *name == key))
    }
}

struct ScalarSeed;

impl<'a> DeserializeSeed<'a> for ScalarSeed {
    type Value = Scalar<'a>;
    fn deserialize<D: serde::Deserializer<'a>>(self, deserializer: D) -> Result<Scalar<'a>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ScalarSeed {
    type Value = Scalar<'a>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, s: &'a str) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'a>, E> {
        Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'a>, E> {
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Scalar<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'a>>(self, mut seq: A) -> Result<Scalar<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_payment_when_extracted_then_named_fields_are_borrowed_and_others_skipped() {
        let value = br#"{"event_id":"e1","ts":1700000000000,"user_id":"u7","nested":{"a":[1,2]},"amount_cents":1234,"country":"G\u0042","f":1.5}"#;
        let names = ["user_id", "ts", "amount_cents", "missing", "country", "nested", "f"];
        let mut out = vec![None; names.len()];
        assert!(extract(value, &names, &mut out));
        assert!(matches!(&out[0], Some(Scalar::Str(Cow::Borrowed("u7")))));
        assert_eq!(out[1], Some(Scalar::Int(1_700_000_000_000)));
        assert_eq!(out[2].as_ref().and_then(Scalar::as_i64), Some(1234));
        assert_eq!(out[3], None);
        assert_eq!(out[4].as_ref().and_then(Scalar::as_str), Some("GB"));
        assert_eq!(out[5], Some(Scalar::Other));
        assert_eq!(out[6], Some(Scalar::Float(1.5)));
    }

    #[test]
    fn given_bad_json_when_extracted_then_false_and_nothing_is_kept() {
        let names = ["a"];
        let mut out = vec![None; 1];
        for bad in [&b"[1,2]"[..], b"{\"a\":1", b"{\"a\":1} x", b"not json", b""] {
            assert!(!extract(bad, &names, &mut out), "{bad:?}");
            assert_eq!(out[0], None);
        }
    }
}
