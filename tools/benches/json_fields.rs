//! Payload field extraction, per event: the path behind `--projection sum:FIELD` and `import --key/--time`.
//!
//! `cargo bench -p catchup-tools --bench json_fields [-- --reps 9 --payload 100]` prints the median ns of
//! thread CPU time per event of each candidate over 65 536 `gen` payloads (`{"key":"k…","seq":…,"amount":…,"pad":"xx…"}`),
//! finding `amount` and reading it as a number, the whole document validated in every variant:
//!
//! - `FieldPath::find (now)`: the code `catchup` runs (`tools/src/json.rs`), a hand-written validating scan.
//! - `serde visitor (before)`: the serde_json `DeserializeSeed` walk `FieldPath::find` used before, kept
//!   here verbatim as the baseline.
//! - `jiter 0.19 pull parser`: pydantic's `jiter`, `next_object`/`next_key`/`next_skip`, then `finish`.
//! - `serde_json::Value`: a whole tree, for scale.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it checks that all variants agree on a few
//! hundred payloads and exits.

#[allow(dead_code, unused_imports)]
#[path = "../src/json.rs"]
mod json;

use std::fmt;
use std::hint::black_box;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let flag = |name: &str, default: usize| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().unwrap())
    };
    let reps = flag("--reps", 9);
    let size = flag("--payload", 100);
    let n = if bench { 65_536 } else { 512 };
    let mut buf = String::new();
    let payloads: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| {
            catchup_tools::synth::payload(&mut buf, 1 + i % 1000, i, 1 + (i * 7919) % 10_000, size);
            buf.clone().into_bytes()
        })
        .collect();
    let path = json::FieldPath::parse("amount").unwrap();
    let parts = vec!["amount".to_string()];

    type Variant<'a> = (&'static str, Box<dyn Fn(&[u8]) -> i64 + 'a>);
    let variants: Vec<Variant<'_>> = vec![
        ("FieldPath::find (now)", Box::new(|p| as_int(path.find(p).unwrap().unwrap()))),
        ("serde visitor (before)", Box::new(|p| as_int(serde_find(&parts, p).unwrap().unwrap().get()))),
        ("jiter 0.19 pull parser", Box::new(|p| as_int(jiter_find("amount", p)))),
        (
            "serde_json::Value",
            Box::new(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap()["amount"].as_i64().unwrap()),
        ),
    ];
    let sums: Vec<i64> = variants.iter().map(|(_, f)| payloads.iter().map(|p| f(p)).sum()).collect();
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "variants disagree: {sums:?}");
    if !bench {
        println!("json_fields smoke run: {} variants agree on {n} payloads", variants.len());
        return;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for rep in 0..reps {
        for k in 0..variants.len() {
            let k = (k + rep) % variants.len();
            let f = &variants[k].1;
            let t = thread_cpu_ns();
            let mut s = 0i64;
            for p in &payloads {
                s = s.wrapping_add(f(black_box(p)));
            }
            black_box(s);
            times[k].push((thread_cpu_ns() - t) as f64 / n as f64);
        }
    }
    println!("payload {size} bytes, {n} payloads, {reps} reps (ns per event: median [min, max])");
    let base = median(&mut times[1].clone()); // the serde visitor
    for (k, (name, _)) in variants.iter().enumerate() {
        let t = &mut times[k];
        let m = median(t);
        let lo = t.iter().cloned().fold(f64::MAX, f64::min);
        let hi = t.iter().cloned().fold(0.0, f64::max);
        println!("{name:<26} {m:7.1} ns [{lo:.1}, {hi:.1}]  {:.2}x the serde visitor", base / m);
    }
}

/// A one-level lookup with `jiter`, validating the whole document like the others.
fn jiter_find<'a>(name: &str, json: &'a [u8]) -> &'a str {
    let mut j = jiter::Jiter::new(json);
    let mut found = None;
    let mut key = j.next_object().unwrap().map(|k| k == name);
    while let Some(hit) = key {
        if hit && found.is_none() {
            let peek = j.peek().unwrap();
            let start = j.current_index();
            j.known_skip(peek).unwrap();
            found = Some(std::str::from_utf8(&json[start..j.current_index()]).unwrap());
        } else {
            j.next_skip().unwrap();
        }
        key = j.next_key().unwrap().map(|k| k == name);
    }
    j.finish().unwrap();
    found.unwrap()
}

fn as_int(raw: &str) -> i64 {
    match json::number(raw) {
        Some(json::Number::Int(i)) => i,
        other => panic!("{other:?}"),
    }
}

/// CPU time of this thread: the machine is shared, so wall-clock time would count other processes' slices.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// The previous implementation of `FieldPath::find`, verbatim but for the names.
fn serde_find<'a>(parts: &[String], json: &'a [u8]) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = PathSeed(parts).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
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
