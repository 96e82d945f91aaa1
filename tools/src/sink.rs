//! The built-in projections as rows of a `--sink` (`docs/sink-format.md`): a row's value is exactly the
//! line `--out` writes for the key (without the newline), and reading it back gives the state again.

use catchup_engine::HandlerError;
use catchup_engine::sink::SinkProjection;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json;
use crate::projection::{Count, Last, LastEvent, Render, Sum, SumState};

/// The `--out` line of `key` without its newline: `{"key":...,FIELDS}`.
fn line<P: Render>(p: &P, key: &str, state: &P::State, out: &mut String) {
    let mut b = Vec::with_capacity(64);
    b.push(b'{');
    json::push_key_field(&mut b, key.as_bytes());
    p.render(state, &mut b);
    b.push(b'}');
    // Every field is JSON text built from UTF-8 pieces (a UTF-8 key, escaped strings, hex).
    out.push_str(&String::from_utf8_lossy(&b));
}

fn bad(value: &str, why: impl std::fmt::Display) -> HandlerError {
    HandlerError::permanent(format!("cannot read back row value {value}: {why}"))
}

/// Checks that `value` is the line this state renders to: a row edited by hand, or written by another
/// projection, is refused rather than folded into.
fn exact<P: Render>(p: &P, key: &str, value: &str, state: P::State) -> Result<P::State, HandlerError> {
    let mut again = String::new();
    line(p, key, &state, &mut again);
    if again != value {
        return Err(bad(value, format!("it reads back as {again}")));
    }
    Ok(state)
}

#[derive(Deserialize)]
struct CountRow {
    count: u64,
}

impl SinkProjection for Count {
    fn value(&self, key: &str, n: &u64, out: &mut String) {
        line(self, key, n, out);
    }
    fn parse_value(&self, key: &str, value: &str) -> Result<u64, HandlerError> {
        let row: CountRow = serde_json::from_str(value).map_err(|e| bad(value, e))?;
        exact(self, key, value, row.count)
    }
}

#[derive(Deserialize)]
struct SumRow<'a> {
    #[serde(borrow)]
    sum: &'a RawValue,
}

impl SinkProjection for Sum {
    fn value(&self, key: &str, s: &SumState, out: &mut String) {
        line(self, key, s, out);
    }
    fn parse_value(&self, key: &str, value: &str) -> Result<SumState, HandlerError> {
        let row: SumRow<'_> = serde_json::from_str(value).map_err(|e| bad(value, e))?;
        let raw = row.sum.get();
        // An exact sum is written as an integer, a floating-point one always with a fraction or exponent.
        let state = if raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            SumState::Float(raw.parse().map_err(|e| bad(value, e))?)
        } else {
            SumState::Int(raw.parse().map_err(|e| bad(value, e))?)
        };
        exact(self, key, value, state)
    }
}

#[derive(Deserialize)]
struct LastRow<'a> {
    position: u64,
    timestamp_ns: u64,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    payload_hex: Option<String>,
}

impl SinkProjection for Last {
    fn value(&self, key: &str, s: &LastEvent, out: &mut String) {
        line(self, key, s, out);
    }
    fn parse_value(&self, key: &str, value: &str) -> Result<LastEvent, HandlerError> {
        let row: LastRow<'_> = serde_json::from_str(value).map_err(|e| bad(value, e))?;
        let payload = match (row.payload, row.payload_hex) {
            // A JSON payload is embedded as it was; text that is not JSON is a JSON string.
            (Some(raw), None) if raw.get().starts_with('"') => {
                serde_json::from_str::<String>(raw.get()).map_err(|e| bad(value, e))?.into_bytes()
            }
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(hex)) => decode_hex(&hex).ok_or_else(|| bad(value, "payload_hex is not hex"))?,
            _ => return Err(bad(value, "it needs one of payload and payload_hex")),
        };
        exact(self, key, value, LastEvent { position: row.position, timestamp_ns: row.timestamp_ns, payload })
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use catchup_engine::{Ctx, Event, Position, Projection, ShardId};

    use super::*;
    use crate::json::FieldPath;

    const CTX: Ctx =
        Ctx { shard: ShardId(0), n_shards: 1, position: Position(7), replay: true, log: 0, log_position: Position(7) };

    fn round_trip<P: SinkProjection + Render>(p: &P, key: &str, s: &P::State) -> String
    where
        P::State: std::fmt::Debug + PartialEq,
    {
        let mut v = String::new();
        p.value(key, s, &mut v);
        let back = p.parse_value(key, &v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(&back, s, "{v}");
        v
    }

    #[test]
    fn values_read_back_exactly() {
        assert_eq!(round_trip(&Count, "k\"1", &42), r#"{"key":"k\"1","count":42}"#);
        let sum = Sum::new(FieldPath::parse("amount").unwrap());
        assert_eq!(round_trip(&sum, "k", &SumState::Int(-5)), r#"{"key":"k","sum":-5}"#);
        assert_eq!(round_trip(&sum, "k", &SumState::Float(3.0)), r#"{"key":"k","sum":3.0}"#);
        round_trip(&sum, "k", &SumState::Float(1e300));
        round_trip(&sum, "k", &SumState::Float(0.1 + 0.2));
        for payload in [&br#"{"a": [1, 2]}"#[..], b"plain text \"q\"", b"\xff\x00", b"", b"12"] {
            let mut s = Last.init(b"k");
            let e = Event { position: Position(7), timestamp_ns: 9, key_hash: 0, key: b"k", payload };
            Last.apply(&mut s, &e, &CTX).unwrap();
            round_trip(&Last, "k", &s);
        }
    }

    #[test]
    fn foreign_values_are_refused() {
        let sum = Sum::new(FieldPath::parse("amount").unwrap());
        for v in [r#"{"key":"k","count":1}"#, r#"{"key":"k","sum":"1"}"#, r#"{"key":"j","sum":1}"#, "nope"] {
            assert!(sum.parse_value("k", v).is_err(), "{v} accepted");
        }
        assert!(Count.parse_value("k", r#"{"key":"k","count":1, "x":2}"#).is_err());
    }
}
