//! The built-in keyed projections of `replay --projection`, as `catchup_engine::Projection`s:
//!
//! - `count`: events per key, `{"key":"k1","count":3}`.
//! - `sum:FIELD`: sum of a numeric payload field (dotted path) per key, `{"key":"k1","sum":250}`. Integer
//!   values are summed exactly (as `i64`, falling back to floating point on overflow or when any value has
//!   a fraction or exponent). A payload that is not JSON, or lacks the field, or whose field is not a number,
//!   is a handler error (a poison event, handled per `--on-error`).
//! - `last`: the last event per key, `{"key":"k1","position":9,"timestamp_ns":...,"payload":...}` (payload as
//!   in `export`).
//!
//! Results are written as JSON Lines sorted by key bytes, so runs can be diffed.

use catchup_engine::{Ctx, Event, HandlerError, KeyedView, Projection};

use crate::json::{self, FieldPath, Number};

/// Which projection, parsed from `--projection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionSpec {
    /// Events per key.
    Count,
    /// Sum of a numeric field per key.
    Sum(FieldPath),
    /// Last event per key.
    Last,
}

impl ProjectionSpec {
    /// Parses `count`, `sum:FIELD` or `last`.
    pub fn parse(s: &str) -> Result<ProjectionSpec, String> {
        match s.split_once(':') {
            None if s == "count" => Ok(ProjectionSpec::Count),
            None if s == "last" => Ok(ProjectionSpec::Last),
            Some(("sum", field)) => Ok(ProjectionSpec::Sum(FieldPath::parse(field)?)),
            _ => Err(format!("unknown projection `{s}`: use count, sum:FIELD (e.g. sum:amount) or last")),
        }
    }

    /// A canonical text of the projection, hashed into the checkpoint fingerprint.
    pub fn canonical(&self) -> String {
        match self {
            ProjectionSpec::Count => "projection=count".into(),
            ProjectionSpec::Sum(f) => format!("projection=sum\0field={f}"),
            ProjectionSpec::Last => "projection=last".into(),
        }
    }
}

/// A projection whose per-key state can be written as one output line.
pub trait Render: Projection {
    /// Appends the fields after `"key":...` (starting with a comma) for `state`.
    fn render(&self, state: &Self::State, out: &mut Vec<u8>);
}

/// Writes every key's state, over all `views`, as JSON Lines sorted by key bytes. Returns the number of
/// lines.
pub fn write_sorted<P: Render>(
    projection: &P,
    views: &[KeyedView<P>],
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(views.iter().map(KeyedView::len).sum());
    for view in views {
        view.for_each(|key, state| {
            let mut line = Vec::with_capacity(64);
            line.push(b'{');
            json::push_key_field(&mut line, key);
            projection.render(state, &mut line);
            line.extend_from_slice(b"}\n");
            rows.push((key.to_vec(), line));
        });
    }
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, line) in &rows {
        out.write_all(line)?;
    }
    Ok(rows.len() as u64)
}

fn decode_u64(b: &[u8], what: &str) -> Result<u64, HandlerError> {
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new(format!("bad {what} state: {} bytes", b.len())))?))
}

/// Events per key.
#[derive(Debug, Clone, Copy)]
pub struct Count;

impl Projection for Count {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    #[inline]
    fn apply(&self, n: &mut u64, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
        *n += 1;
        Ok(())
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        decode_u64(b, "count")
    }
}

impl Render for Count {
    fn render(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(format!(",\"count\":{n}").as_bytes());
    }
}

/// A running sum: exact while every value is an integer and it fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SumState {
    /// Exact integer sum.
    Int(i64),
    /// Floating-point sum.
    Float(f64),
}

/// Sum of a numeric payload field per key.
#[derive(Debug, Clone)]
pub struct Sum {
    field: FieldPath,
}

impl Sum {
    /// Sums `field`.
    pub fn new(field: FieldPath) -> Sum {
        Sum { field }
    }
}

impl Projection for Sum {
    type State = SumState;
    fn init(&self, _key: &[u8]) -> SumState {
        SumState::Int(0)
    }
    fn apply(&self, s: &mut SumState, e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
        let raw = match self.field.find(e.payload) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(HandlerError::new(format!("payload has no field `{}`", self.field))),
            Err(err) => return Err(HandlerError::new(format!("payload is not valid JSON: {err}"))),
        };
        let Some(n) = json::number(raw) else {
            return Err(HandlerError::new(format!("field `{}` is {}, not a number", self.field, json::kind_of(raw))));
        };
        *s = match (*s, n) {
            (SumState::Int(a), Number::Int(b)) => match a.checked_add(b) {
                Some(c) => SumState::Int(c),
                None => SumState::Float(a as f64 + b as f64),
            },
            (SumState::Int(a), Number::Float(b)) => SumState::Float(a as f64 + b),
            (SumState::Float(a), Number::Int(b)) => SumState::Float(a + b as f64),
            (SumState::Float(a), Number::Float(b)) => SumState::Float(a + b),
        };
        Ok(())
    }
    fn encode(&self, s: &SumState, out: &mut Vec<u8>) {
        match s {
            SumState::Int(i) => {
                out.push(0);
                out.extend_from_slice(&i.to_le_bytes());
            }
            SumState::Float(f) => {
                out.push(1);
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
    fn decode(&self, b: &[u8]) -> Result<SumState, HandlerError> {
        let (tag, rest) = b.split_first().ok_or_else(|| HandlerError::new("bad sum state: empty"))?;
        let bits = decode_u64(rest, "sum")?;
        match tag {
            0 => Ok(SumState::Int(bits as i64)),
            1 => Ok(SumState::Float(f64::from_bits(bits))),
            t => Err(HandlerError::new(format!("bad sum state: tag {t}"))),
        }
    }
}

impl Render for Sum {
    fn render(&self, s: &SumState, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"sum\":");
        match s {
            SumState::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            SumState::Float(f) => {
                serde_json::to_writer(&mut *out, f).expect("writing to a Vec cannot fail");
            }
        }
    }
}

/// The last event of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastEvent {
    /// Its position.
    pub position: u64,
    /// Its timestamp.
    pub timestamp_ns: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Last event per key.
#[derive(Debug, Clone, Copy)]
pub struct Last;

impl Projection for Last {
    type State = LastEvent;
    fn init(&self, _key: &[u8]) -> LastEvent {
        LastEvent::default()
    }
    fn apply(&self, s: &mut LastEvent, e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
        s.position = e.position.0;
        s.timestamp_ns = e.timestamp_ns;
        s.payload.clear();
        s.payload.extend_from_slice(e.payload);
        Ok(())
    }
    fn encode(&self, s: &LastEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(&s.position.to_le_bytes());
        out.extend_from_slice(&s.timestamp_ns.to_le_bytes());
        out.extend_from_slice(&s.payload);
    }
    fn decode(&self, b: &[u8]) -> Result<LastEvent, HandlerError> {
        if b.len() < 16 {
            return Err(HandlerError::new(format!("bad last state: {} bytes", b.len())));
        }
        Ok(LastEvent {
            position: decode_u64(&b[..8], "last")?,
            timestamp_ns: decode_u64(&b[8..16], "last")?,
            payload: b[16..].to_vec(),
        })
    }
}

impl Render for Last {
    fn render(&self, s: &LastEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(format!(",\"position\":{},\"timestamp_ns\":{},", s.position, s.timestamp_ns).as_bytes());
        json::push_payload_field(out, &s.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catchup_engine::{Position, ShardId};

    fn event<'a>(payload: &'a [u8]) -> Event<'a> {
        Event { position: Position(7), timestamp_ns: 9, key_hash: 0, key: b"k", payload }
    }
    const CTX: Ctx =
        Ctx { shard: ShardId(0), n_shards: 1, position: Position(7), replay: true, log: 0, log_position: Position(7) };

    #[test]
    fn parse_specs() {
        assert_eq!(ProjectionSpec::parse("count"), Ok(ProjectionSpec::Count));
        assert!(matches!(ProjectionSpec::parse("sum:a.b"), Ok(ProjectionSpec::Sum(_))));
        assert!(ProjectionSpec::parse("sum:").is_err());
        assert!(ProjectionSpec::parse("avg").is_err());
    }

    #[test]
    fn sum_is_exact_then_float_and_round_trips() {
        let p = Sum::new(FieldPath::parse("o.amount").unwrap());
        let mut s = p.init(b"k");
        p.apply(&mut s, &event(br#"{"o":{"amount":5}}"#), &CTX).unwrap();
        p.apply(&mut s, &event(br#"{"o":{"amount":-2}}"#), &CTX).unwrap();
        assert_eq!(s, SumState::Int(3));
        assert!(p.apply(&mut s, &event(br#"{"o":{}}"#), &CTX).is_err());
        assert!(p.apply(&mut s, &event(br#"{"o":{"amount":"5"}}"#), &CTX).is_err());
        assert!(p.apply(&mut s, &event(b"nope"), &CTX).is_err());
        p.apply(&mut s, &event(br#"{"o":{"amount":0.5}}"#), &CTX).unwrap();
        assert_eq!(s, SumState::Float(3.5));
        let mut b = Vec::new();
        p.encode(&s, &mut b);
        assert_eq!(p.decode(&b).unwrap(), s);
    }

    #[test]
    fn last_round_trips() {
        let mut s = Last.init(b"k");
        Last.apply(&mut s, &event(br#"{"a":1}"#), &CTX).unwrap();
        let mut b = Vec::new();
        Last.encode(&s, &mut b);
        assert_eq!(Last.decode(&b).unwrap(), s);
        let mut line = Vec::new();
        Last.render(&s, &mut line);
        assert_eq!(line, br#","position":7,"timestamp_ns":9,"payload":{"a":1}"#);
    }
}
