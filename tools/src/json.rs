//! The JSON the command line reads and writes: dotted-path field lookup without building a tree, and the
//! one event line format shared by `export`, `--exec` and the `last` projection.
//!
//! An event line is `{"position":P,"timestamp_ns":T,"key":K,"payload":V}`:
//! - `key` is the key as a JSON string when it is UTF-8; otherwise the field is `key_hex` (hex of the bytes).
//! - `payload` is embedded as JSON, byte for byte, when it is a JSON object, array, number, `true`, `false`
//!   or `null` with no surrounding whitespace. Anything else (text that is not JSON, or a JSON string) is
//!   a JSON string of its text; bytes that are not UTF-8 go into `payload_hex` instead. So a reader can
//!   always recover the exact payload bytes: raw JSON text, the string's content, or the hex.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Most nesting levels a dotted path may have.
pub const PATH_DEPTH_MAX: usize = 32;

/// A dotted field path such as `order.id`, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    parts: Vec<String>,
    text: String,
}

impl FieldPath {
    /// Parses `a.b.c`. Empty parts are rejected.
    pub fn parse(s: &str) -> Result<FieldPath, String> {
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if s.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{s}` is not a field path (use names separated by dots, e.g. order.id)"));
        }
        if parts.len() > PATH_DEPTH_MAX {
            return Err(format!("field path `{s}` is deeper than {PATH_DEPTH_MAX} levels"));
        }
        Ok(FieldPath { parts, text: s.to_string() })
    }

    /// Finds the field in a JSON document. `Ok(None)` if the document is valid JSON but has no such
    /// field; `Err` if it is not valid JSON. Parses without allocating a tree; the whole document is
    /// still checked for validity.
    pub fn find<'a>(&self, json: &'a [u8]) -> Result<Option<&'a RawValue>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let v = PathSeed(&self.parts).deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct PathSeed<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return <&RawValue as de::Deserialize>::deserialize(d).map(Some);
        }
        d.deserialize_any(PathVisitor(self.0))
    }
}

struct PathVisitor<'p>(&'p [String]);

impl<'de> Visitor<'de> for PathVisitor<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(&self.0[0]))? {
            if hit && found.is_none() {
                found = map.next_value_seed(PathSeed(&self.0[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Deserialises a map key and says whether it equals the wanted name (no allocation when unescaped).
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// What a JSON value is, for messages.
pub fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A JSON number, kept exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer literal that fits an `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
}

/// Reads a JSON number; `None` if the value is not a number.
pub fn number(raw: &RawValue) -> Option<Number> {
    let t = raw.get();
    let first = *t.as_bytes().first()?;
    if first != b'-' && !first.is_ascii_digit() {
        return None;
    }
    if !t.contains(['.', 'e', 'E'])
        && let Ok(i) = t.parse::<i64>()
    {
        return Some(Number::Int(i));
    }
    t.parse::<f64>().ok().map(Number::Float)
}

/// The text of a key field: a string's content, or a number's literal text. `Err` names what it was.
pub fn key_text(raw: &RawValue) -> Result<String, &'static str> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(t).map_err(|_| "an invalid string"),
        Some(b'-' | b'0'..=b'9') => Ok(t.to_string()),
        _ => Err(kind_of(raw)),
    }
}

/// Appends `s` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'"');
}

/// Decodes lower- or upper-case hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Appends `"key":"..."` (or `"key_hex":"..."` for keys that are not UTF-8).
pub fn push_key_field(out: &mut Vec<u8>, key: &[u8]) {
    match std::str::from_utf8(key) {
        Ok(s) => {
            out.extend_from_slice(b"\"key\":");
            push_str(out, s);
        }
        Err(_) => {
            out.extend_from_slice(b"\"key_hex\":");
            push_hex(out, key);
        }
    }
}

/// True if `payload` is embedded as raw JSON (see the module docs).
pub fn embeds_raw(payload: &[u8]) -> bool {
    match payload.first() {
        Some(b'{' | b'[' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {}
        _ => return false,
    }
    match serde_json::from_slice::<&RawValue>(payload) {
        Ok(raw) => raw.get().len() == payload.len(),
        Err(_) => false,
    }
}

/// Appends `"payload":...` per the module docs.
pub fn push_payload_field(out: &mut Vec<u8>, payload: &[u8]) {
    if embeds_raw(payload) {
        out.extend_from_slice(b"\"payload\":");
        out.extend_from_slice(payload);
        return;
    }
    match std::str::from_utf8(payload) {
        Ok(s) => {
            out.extend_from_slice(b"\"payload\":");
            push_str(out, s);
        }
        Err(_) => {
            out.extend_from_slice(b"\"payload_hex\":");
            push_hex(out, payload);
        }
    }
}

/// Appends one event line, newline included.
pub fn push_event_line(out: &mut Vec<u8>, position: u64, timestamp_ns: u64, key: &[u8], payload: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{{\"position\":{position},\"timestamp_ns\":{timestamp_ns},");
    push_key_field(out, key);
    out.push(b',');
    push_payload_field(out, payload);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dotted_paths() {
        let p = FieldPath::parse("order.id").unwrap();
        let doc = br#"{"x":[1,{"id":2}],"order":{"note":"a\"b","id":"o-17"},"order2":1}"#;
        assert_eq!(p.find(doc).unwrap().unwrap().get(), r#""o-17""#);
        assert!(FieldPath::parse("nope").unwrap().find(doc).unwrap().is_none());
        assert!(p.find(br#"{"order":{"id":1}"#).is_err());
        assert!(p.find(br#"{"order":{"id":1}} x"#).is_err());
        assert!(FieldPath::parse("a..b").is_err());
    }

    #[test]
    fn keys_numbers_payloads() {
        let raw = |s: &'static str| serde_json::from_str::<&RawValue>(s).unwrap();
        assert_eq!(key_text(raw("\"k\\n1\"")), Ok("k\n1".to_string()));
        assert_eq!(key_text(raw("42")), Ok("42".to_string()));
        assert_eq!(key_text(raw("{}")), Err("an object"));
        assert_eq!(number(raw("-7")), Some(Number::Int(-7)));
        assert_eq!(number(raw("1.5e3")), Some(Number::Float(1500.0)));
        assert_eq!(number(raw("\"1\"")), None);
        let mut out = Vec::new();
        push_event_line(&mut out, 3, 4, b"k", br#"{"a":1}"#);
        assert_eq!(out, b"{\"position\":3,\"timestamp_ns\":4,\"key\":\"k\",\"payload\":{\"a\":1}}\n");
        out.clear();
        push_payload_field(&mut out, b"\"s\"");
        assert_eq!(out, br#""payload":"\"s\"""#);
        out.clear();
        push_payload_field(&mut out, b" {}");
        assert_eq!(out, br#""payload":" {}""#);
        out.clear();
        push_key_field(&mut out, &[0xff, 0x01]);
        assert_eq!(out, br#""key_hex":"ff01""#);
        assert_eq!(from_hex("ff01"), Some(vec![0xff, 1]));
    }
}
