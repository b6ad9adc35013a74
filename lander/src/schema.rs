//! Topic schemas (`schemas/<topic>.toml`): which JSON fields of a record's value
//! become typed Parquet columns, and which one is the event time.
//!
//! ```toml
//! version = 1                  # schema file format version
//! event_time = "ts"            # optional: a declared int64 or timestamp-ms field
//!
//! [[field]]
//! name = "ts"                  # top-level JSON field; also the column name
//! type = "timestamp-ms"        # string | int64 | float64 | bool | timestamp-ms
//! required = true              # default false
//! ```
//!
//! Extraction rule: a value that is not a JSON object, or lacks a required field, or
//! has a required field of the wrong type, is *bad*: every typed column is null for it.
//! An optional field that is missing is null; one of the wrong type is null and also
//! makes the record bad. Bad records are counted, never dropped: the raw `value`
//! column always holds the bytes. Integers must be JSON integers (`12.0` is not an
//! int64); `float64` accepts any JSON number; `timestamp-ms` takes integer
//! milliseconds since the epoch.

use serde::Deserialize;
use std::path::Path;

/// Schema file format version this build reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Columns every landed file has, before the typed ones.
pub const BASE_COLUMNS: [&str; 6] = ["partition", "offset", "timestamp", "key", "value", "headers"];
/// Most typed fields one schema may declare.
pub const SCHEMA_FIELDS_MAX: usize = 256;

/// Arrow type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldType {
    /// UTF-8 string (JSON string).
    String,
    /// 64-bit signed integer (JSON integer).
    Int64,
    /// 64-bit float (any JSON number).
    Float64,
    /// Boolean (JSON true/false).
    Bool,
    /// Milliseconds since the epoch, UTC (JSON integer).
    TimestampMs,
}

/// One typed column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Top-level JSON field name, also the column name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether a record without it (or with a wrong type) is bad.
    #[serde(default)]
    pub required: bool,
}

/// A topic's schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSchema {
    /// Format version; must be [`SCHEMA_VERSION`].
    pub version: u32,
    /// The field holding event time (ms since epoch), if any.
    #[serde(default)]
    pub event_time: Option<String>,
    /// Typed columns, in column order.
    #[serde(default, rename = "field")]
    pub fields: Vec<Field>,
}

/// Errors loading a schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid schema.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl TopicSchema {
    /// The schema for records without one: no typed columns, record timestamp as
    /// event time.
    pub fn raw() -> Self {
        Self { version: SCHEMA_VERSION, event_time: None, fields: Vec::new() }
    }

    /// Parses and checks schema text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let invalid = |reason: String| SchemaError::Invalid { path: origin.to_string(), reason };
        let schema: Self = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        if schema.version != SCHEMA_VERSION {
            return Err(invalid(format!(
                "schema version {} (this build reads {SCHEMA_VERSION})",
                schema.version
            )));
        }
        if schema.fields.len() > SCHEMA_FIELDS_MAX {
            return Err(invalid(format!("more than {SCHEMA_FIELDS_MAX} fields")));
        }
        for (i, field) in schema.fields.iter().enumerate() {
            if field.name.is_empty() || BASE_COLUMNS.contains(&field.name.as_str()) {
                return Err(invalid(format!("field name {:?} is empty or a built-in column", field.name)));
            }
            if schema.fields[..i].iter().any(|f| f.name == field.name) {
                return Err(invalid(format!("field {:?} declared twice", field.name)));
            }
        }
        if let Some(name) = &schema.event_time {
            let field = schema.fields.iter().find(|f| &f.name == name);
            if !field.is_some_and(|f| matches!(f.field_type, FieldType::Int64 | FieldType::TimestampMs)) {
                return Err(invalid(format!(
                    "event_time {name:?} is not a declared int64 or timestamp-ms field"
                )));
            }
        }
        Ok(schema)
    }

    /// Loads `DIR/<topic>.toml`, or the raw schema when the file does not exist.
    pub fn load(dir: Option<&Path>, topic: &str) -> Result<Self, SchemaError> {
        let Some(dir) = dir else { return Ok(Self::raw()) };
        let path = dir.join(format!("{topic}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::raw()),
            Err(source) => Err(SchemaError::Io { path: path.display().to_string(), source }),
        }
    }

    /// Index of the event-time field in `fields`.
    pub fn event_time_index(&self) -> Option<usize> {
        let name = self.event_time.as_ref()?;
        self.fields.iter().position(|f| &f.name == name)
    }
}

/// One extracted typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or unusable.
    Null,
    /// A string.
    Str(String),
    /// An integer (int64 and timestamp-ms).
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// Extracts the schema's fields from a JSON value into `out` (one entry per field,
/// in order). Returns whether the record is good (see the module doc).
///
/// One pass over the value with a borrowing deserializer: keys are compared in place,
/// undeclared fields are skipped without being built, and only declared strings are
/// copied.
pub fn extract(schema: &TopicSchema, value: Option<&[u8]>, out: &mut Vec<Value>) -> bool {
    out.clear();
    if schema.fields.is_empty() {
        return true;
    }
    out.resize(schema.fields.len(), Value::Null);
    let Some(value) = value else { return false };
    let mut deserializer = serde_json::Deserializer::from_slice(value);
    let mut wrong_type = false;
    let parsed = serde::de::DeserializeSeed::deserialize(
        ObjectSeed { fields: &schema.fields, out: out.as_mut_slice(), wrong_type: &mut wrong_type },
        &mut deserializer,
    )
    .and_then(|()| deserializer.end());
    if parsed.is_err() {
        out.iter_mut().for_each(|v| *v = Value::Null);
        return false;
    }
    let required_failed = schema.fields.iter().zip(out.iter()).any(|(f, v)| f.required && *v == Value::Null);
    if required_failed {
        out.iter_mut().for_each(|v| *v = Value::Null);
    }
    !(required_failed || wrong_type)
}

/// Deserializes a JSON object, filling the declared fields.
struct ObjectSeed<'a> {
    fields: &'a [Field],
    out: &'a mut [Value],
    wrong_type: &'a mut bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(index) = map.next_key_seed(KeySeed { fields: self.fields })? {
            match index {
                Some(i) => {
                    let value = map.next_value_seed(TypedSeed(self.fields[i].field_type))?;
                    *self.wrong_type |= value.is_none();
                    self.out[i] = value.unwrap_or(Value::Null);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A key: the index of the declared field it names, if any (compared in place).
struct KeySeed<'a> {
    fields: &'a [Field],
}

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.fields.iter().position(|f| f.name == key))
    }
}

/// A declared field's value: `Some` when it has the declared type, `Some(Null)` for
/// JSON null, `None` for another type.
struct TypedSeed(FieldType);

impl<'de> serde::de::DeserializeSeed<'de> for TypedSeed {
    type Value = Option<Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TypedSeed {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(Some(Value::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Option<Value>, E> {
        Ok((self.0 == FieldType::Bool).then_some(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int64 | FieldType::TimestampMs => Some(Value::Int(v)),
            FieldType::Float64 => Some(Value::Float(v as f64)),
            _ => None,
        })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int64 | FieldType::TimestampMs => i64::try_from(v).ok().map(Value::Int),
            FieldType::Float64 => Some(Value::Float(v as f64)),
            _ => None,
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<Value>, E> {
        Ok((self.0 == FieldType::Float64).then_some(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<Value>, E> {
        Ok((self.0 == FieldType::String).then(|| Value::Str(v.to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYMENTS: &str = r#"
        version = 1
        event_time = "ts"
        [[field]]
        name = "ts"
        type = "timestamp-ms"
        required = true
        [[field]]
        name = "amount_cents"
        type = "int64"
        required = true
        [[field]]
        name = "country"
        type = "string"
        [[field]]
        name = "score"
        type = "float64"
        [[field]]
        name = "flagged"
        type = "bool"
    "#;

    fn payments() -> TopicSchema {
        TopicSchema::parse(PAYMENTS, "payments.toml").unwrap()
    }

    #[test]
    fn given_a_complete_value_when_extracted_then_every_column_is_typed() {
        let mut out = Vec::new();
        let good = extract(
            &payments(),
            Some(
                br#"{"ts":1700000000123,"amount_cents":-5,"country":"FR","score":1,"flagged":true,"x":[1]}"#,
            ),
            &mut out,
        );
        assert!(good);
        assert_eq!(
            out,
            vec![
                Value::Int(1_700_000_000_123),
                Value::Int(-5),
                Value::Str("FR".into()),
                Value::Float(1.0),
                Value::Bool(true)
            ]
        );
        assert_eq!(payments().event_time_index(), Some(0));
    }

    #[test]
    fn given_a_missing_optional_field_when_extracted_then_only_it_is_null_and_record_is_good() {
        let mut out = Vec::new();
        assert!(extract(&payments(), Some(br#"{"ts":1,"amount_cents":2}"#), &mut out));
        assert_eq!(out, vec![Value::Int(1), Value::Int(2), Value::Null, Value::Null, Value::Null]);
    }

    #[test]
    fn given_a_wrong_optional_type_when_extracted_then_it_is_null_and_record_is_bad() {
        let mut out = Vec::new();
        assert!(!extract(&payments(), Some(br#"{"ts":1,"amount_cents":2,"country":7}"#), &mut out));
        assert_eq!(out, vec![Value::Int(1), Value::Int(2), Value::Null, Value::Null, Value::Null]);
    }

    #[test]
    fn given_bad_values_when_extracted_then_all_typed_columns_are_null() {
        let schema = payments();
        let mut out = Vec::new();
        for value in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"ts":1}"#,
            br#"{"ts":1,"amount_cents":2.5,"country":"FR"}"#,
            br#"{"ts":"yesterday","amount_cents":2,"country":"FR"}"#,
        ] {
            assert!(!extract(&schema, Some(value), &mut out), "{}", String::from_utf8_lossy(value));
            assert_eq!(out, vec![Value::Null; 5]);
        }
        assert!(!extract(&schema, None, &mut out));
    }

    #[test]
    fn given_the_repository_payments_schema_when_parsed_then_ts_is_event_time() {
        let schema =
            TopicSchema::parse(include_str!("../../schemas/payments.toml"), "payments.toml").unwrap();
        assert_eq!(schema.event_time_index().map(|i| schema.fields[i].name.as_str()), Some("ts"));
        assert_eq!(schema.fields.len(), 9);
    }

    #[test]
    fn given_json_edge_cases_when_extracted_then_they_follow_the_rules() {
        let schema = payments();
        let mut out = Vec::new();
        // Escaped key names match; undeclared nested values are skipped.
        assert!(extract(&schema, Some(br#"{"x":{"a":[1,{"b":2}]},"t\u0073":5,"amount_cents":6}"#), &mut out));
        assert_eq!(out[..2], [Value::Int(5), Value::Int(6)]);
        // JSON null is missing: fine for optional fields, bad for required ones.
        assert!(extract(&schema, Some(br#"{"ts":1,"amount_cents":2,"country":null}"#), &mut out));
        assert!(!extract(&schema, Some(br#"{"ts":null,"amount_cents":2}"#), &mut out));
        // A declared field holding an object or array is the wrong type.
        assert!(!extract(&schema, Some(br#"{"ts":1,"amount_cents":2,"country":{"c":"FR"}}"#), &mut out));
        assert_eq!(out[2], Value::Null);
        // Trailing bytes after the object make the value unparsable.
        assert!(!extract(&schema, Some(br#"{"ts":1,"amount_cents":2} x"#), &mut out));
        assert_eq!(out, vec![Value::Null; 5]);
        // Integers beyond i64 are not int64; any number is float64.
        assert!(!extract(&schema, Some(br#"{"ts":1,"amount_cents":18446744073709551615}"#), &mut out));
        assert!(extract(&schema, Some(br#"{"ts":1,"amount_cents":2,"score":-3}"#), &mut out));
        assert_eq!(out[3], Value::Float(-3.0));
    }

    #[test]
    fn given_invalid_schema_files_when_parsed_then_errors_say_why() {
        let cases = [
            ("version = 2", "schema version 2"),
            ("version = 1\n[[field]]\nname = \"offset\"\ntype = \"int64\"", "built-in column"),
            ("version = 1\n[[field]]\nname = \"a\"\ntype = \"decimal\"", "unknown variant"),
            ("version = 1\nevent_time = \"a\"\n[[field]]\nname = \"a\"\ntype = \"string\"", "event_time"),
            (
                "version = 1\n[[field]]\nname = \"a\"\ntype = \"bool\"\n[[field]]\nname = \"a\"\ntype = \"bool\"",
                "declared twice",
            ),
        ];
        for (text, expected) in cases {
            let error = TopicSchema::parse(text, "t.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
