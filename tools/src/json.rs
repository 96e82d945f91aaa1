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
use std::ops::Range;

use serde_json::value::RawValue;

/// Most nesting levels a dotted path may have.
pub const PATH_DEPTH_MAX: usize = 32;

/// Most nesting levels of arrays and objects in a document [`FieldPath::find`] reads (serde_json's limit).
pub const NESTING_MAX: usize = 128;

/// A dotted field path such as `order.id`, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    parts: Vec<String>,
    text: String,
}

/// Why a document is not valid JSON, and where: `column` is the 1-based byte offset in the document
/// (the documents read here are single lines: payloads and import lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// 1-based byte column of the first byte that is not valid JSON (one past the end for a truncated
    /// document).
    pub column: usize,
    /// What is wrong there, e.g. "EOF while parsing an object".
    pub message: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.column)
    }
}

impl std::error::Error for JsonError {}

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

    /// Finds the field in a JSON document and returns its raw JSON text (e.g. `42`, `"o-17"`, `{...}`).
    /// `Ok(None)` if the document is valid JSON but has no such field (the first occurrence wins when a
    /// name repeats); `Err` if it is not valid JSON, with the column where it breaks.
    ///
    /// The whole document is checked, in one pass without a tree or an allocation: structure, strings
    /// (escapes, control characters), numbers, literals, nesting (at most [`NESTING_MAX`]) and trailing
    /// text. The value found must be UTF-8, and so must the names compared on the path; the bytes of other
    /// strings are not decoded. These are the rules of the serde_json visitor this replaced (a test
    /// compares the two on thousands of mutated documents), 1.6x faster than it on `gen`'s 100-byte payloads
    /// (`tools/benches/json_fields.rs`, `BENCHMARKS.md`, "Payload field extraction"): this runs for every
    /// event of `sum:FIELD` and every line of `import --key`.
    pub fn find<'a>(&self, json: &'a [u8]) -> Result<Option<&'a str>, JsonError> {
        let mut s = Scan { b: json, i: 0, depth: 0 };
        let found = s.value(Some(&self.parts)).and_then(|found| {
            s.ws();
            if s.i < json.len() { Err(s.err("trailing characters")) } else { Ok(found) }
        })?;
        let Some(range) = found else { return Ok(None) };
        let start = range.start;
        std::str::from_utf8(&json[range])
            .map(Some)
            .map_err(|e| JsonError { column: start + e.valid_up_to() + 1, message: "invalid UTF-8 in a string" })
    }
}

/// A validating pass over one JSON document (RFC 8259), looking for one path.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl Scan<'_> {
    fn err(&self, message: &'static str) -> JsonError {
        JsonError { column: self.i + 1, message }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Consumes one value (after whitespace). `path`: `None` when nothing is looked for below here,
    /// `Some([])` when this value is the one looked for (its range is returned), `Some(names)` to look
    /// for `names` below it.
    fn value(&mut self, path: Option<&[String]>) -> Result<Option<Range<usize>>, JsonError> {
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'{') => {
                let below = match path {
                    Some([]) | None => None,
                    Some(names) => Some(names),
                };
                let found = self.object(below)?;
                Ok(if path == Some(&[]) { Some(start..self.i) } else { found })
            }
            other => {
                match other {
                    Some(b'[') => self.array()?,
                    Some(b'"') => self.string().map(drop)?,
                    Some(b'-' | b'0'..=b'9') => self.number()?,
                    Some(b't') => self.literal(b"true")?,
                    Some(b'f') => self.literal(b"false")?,
                    Some(b'n') => self.literal(b"null")?,
                    Some(_) => return Err(self.err("expected value")),
                    None => return Err(self.err("EOF while parsing a value")),
                }
                Ok((path == Some(&[])).then_some(start..self.i))
            }
        }
    }

    fn nest(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(self.err("recursion limit exceeded"));
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    /// At `{`: consumes the object; returns the range of `names` below it if found.
    fn object(&mut self, names: Option<&[String]>) -> Result<Option<Range<usize>>, JsonError> {
        self.nest()?;
        let mut found = None;
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(None);
        }
        loop {
            match self.peek() {
                Some(b'"') => {}
                Some(_) => return Err(self.err("key must be a string")),
                None => return Err(self.err("EOF while parsing an object")),
            }
            let key_at = self.i;
            let escaped = self.string()?;
            let below = match names {
                Some([name, rest @ ..]) if self.key_is(key_at, escaped, name)? && found.is_none() => Some(rest),
                _ => None,
            };
            self.ws();
            match self.peek() {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.err("expected `:`")),
                None => return Err(self.err("EOF while parsing an object")),
            }
            let v = self.value(below)?;
            if below.is_some() {
                found = v;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(found);
                }
                Some(_) => return Err(self.err("expected `,` or `}`")),
                None => return Err(self.err("EOF while parsing an object")),
            }
        }
    }

    /// Whether the name string at `at..self.i` (quotes included) is `name`.
    fn key_is(&self, at: usize, escaped: bool, name: &str) -> Result<bool, JsonError> {
        let text = &self.b[at + 1..self.i - 1];
        if !escaped {
            if text.is_ascii() || std::str::from_utf8(text).is_ok() {
                return Ok(text == name.as_bytes());
            }
            return Err(JsonError { column: at + 2, message: "invalid UTF-8 in an object key" });
        }
        // Rare: decode the escapes (and check the surrogates) as serde_json does.
        match serde_json::from_slice::<String>(&self.b[at..self.i]) {
            Ok(key) => Ok(key == name),
            Err(e) => Err(JsonError { column: at + e.column(), message: "invalid escape in an object key" }),
        }
    }

    /// At `[`: consumes the array.
    fn array(&mut self) -> Result<(), JsonError> {
        self.nest()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.value(None)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                Some(_) => return Err(self.err("expected `,` or `]`")),
                None => return Err(self.err("EOF while parsing a list")),
            }
        }
    }

    /// At `"`: consumes the string; says whether it holds escapes.
    #[inline]
    fn string(&mut self) -> Result<bool, JsonError> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        self.i += 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or control character. Only the lowest
            // flagged byte is used: the borrow of a subtraction can flag bytes above a true hit, never below.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                let zero = |y: u64| y.wrapping_sub(ONES) & !y & HIGHS;
                let hits = zero(x ^ (ONES * b'"' as u64))
                    | zero(x ^ (ONES * b'\\' as u64))
                    | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
                if hits == 0 {
                    self.i += 8;
                } else {
                    self.i += hits.trailing_zeros() as usize / 8;
                    break;
                }
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    Some(h) if h.is_ascii_hexdigit() => self.i += 1,
                                    Some(_) => return Err(self.err("invalid escape")),
                                    None => return Err(self.err("EOF while parsing a string")),
                                }
                            }
                        }
                        Some(_) => return Err(self.err("invalid escape")),
                        None => return Err(self.err("EOF while parsing a string")),
                    }
                }
                Some(0..0x20) => {
                    return Err(self.err("control character (\\u0000-\\u001F) found while parsing a string"));
                }
                Some(_) => self.i += 1,
                None => return Err(self.err("EOF while parsing a string")),
            }
        }
    }

    fn digits(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'0'..=b'9') => self.i += 1,
            Some(_) => return Err(self.err("invalid number")),
            None => return Err(self.err("EOF while parsing a value")),
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        Ok(())
    }

    /// At `-` or a digit: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        for &c in word {
            match self.peek() {
                Some(x) if x == c => self.i += 1,
                Some(_) => return Err(self.err("expected ident")),
                None => return Err(self.err("EOF while parsing a value")),
            }
        }
        Ok(())
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a JSON value (its raw text, as [`FieldPath::find`] returns it) is, for messages.
pub fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
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

/// Reads a JSON number from a value's raw text; `None` if the value is not a number.
pub fn number(t: &str) -> Option<Number> {
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

/// The text of a key field (its raw JSON text): a string's content, or a number's literal text. `Err`
/// names what it was.
pub fn key_text(t: &str) -> Result<String, &'static str> {
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(t).map_err(|_| "an invalid string"),
        Some(b'-' | b'0'..=b'9') => Ok(t.to_string()),
        _ => Err(kind_of(t)),
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
        assert_eq!(p.find(doc).unwrap().unwrap(), r#""o-17""#);
        assert!(FieldPath::parse("nope").unwrap().find(doc).unwrap().is_none());
        assert!(p.find(br#"{"order":{"id":1}"#).is_err());
        assert!(p.find(br#"{"order":{"id":1}} x"#).is_err());
        assert!(FieldPath::parse("a..b").is_err());
    }

    #[test]
    fn keys_numbers_payloads() {
        assert_eq!(key_text("\"k\\n1\""), Ok("k\n1".to_string()));
        assert_eq!(key_text("42"), Ok("42".to_string()));
        assert_eq!(key_text("{}"), Err("an object"));
        assert_eq!(number("-7"), Some(Number::Int(-7)));
        assert_eq!(number("1.5e3"), Some(Number::Float(1500.0)));
        assert_eq!(number("\"1\""), None);
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

    #[test]
    fn find_reports_where_the_json_breaks() {
        let p = FieldPath::parse("amount").unwrap();
        let e = p.find(br#"{"amount":5,"pad":"x"#).unwrap_err();
        assert_eq!((e.column, e.message), (21, "EOF while parsing a string"));
        assert_eq!(e.to_string(), "EOF while parsing a string at column 21");
        assert_eq!(p.find(b"").unwrap_err().to_string(), "EOF while parsing a value at column 1");
        // An error after the field is still an error: the whole document is checked.
        assert_eq!(p.find(br#"{"amount":5,"x":tru}"#).unwrap_err().column, 20);
        assert_eq!(p.find(br#"{"amount":5} {}"#).unwrap_err().column, 14);
        assert_eq!(p.find(b"{\"amount\":5,\"s\":\"a\tb\"}").unwrap_err().column, 19);
        assert_eq!(p.find(b"{\"amount\":\"\xff\"}").unwrap_err().column, 12);
        assert_eq!(p.find(b"{\"\xff\":1}").unwrap_err().column, 3);
        let deep = format!("{}{}", "[".repeat(NESTING_MAX + 1), "]".repeat(NESTING_MAX + 1));
        assert_eq!(p.find(deep.as_bytes()).unwrap_err().message, "recursion limit exceeded");
        assert!(p.find(format!("{}{}", "[".repeat(NESTING_MAX), "]".repeat(NESTING_MAX)).as_bytes()).is_ok());
        assert!(p.find(b"{\"s\":\"\xff\",\"amount\":1}").unwrap().is_some(), "skipped strings are not decoded");
    }

    #[test]
    fn find_takes_the_first_of_repeated_names_and_exact_raw_text() {
        let p = FieldPath::parse("a.b").unwrap();
        assert_eq!(p.find(br#" { "a" : { "b" : 1 , "b" : 2 } , "a" : { "b" : 3 } } "#).unwrap(), Some("1"));
        assert_eq!(p.find(br#"{"a":[{"b":1}],"b":2}"#).unwrap(), None);
        assert_eq!(p.find(br#"{"a":{"b":{"c":[1, 2]}}}"#).unwrap(), Some(r#"{"c":[1, 2]}"#));
        assert_eq!(p.find(br#"{"\u0061":{"b":-0.5e-3}}"#).unwrap(), Some("-0.5e-3"), "escaped names match");
        assert_eq!(p.find(b"[1]").unwrap(), None);
        assert_eq!(p.find(b"7").unwrap(), None);
        // Integers beyond 2^53 and 2^63 keep the exact text, so `number` decides as before.
        let big = FieldPath::parse("n").unwrap();
        assert_eq!(
            number(big.find(br#"{"n":9007199254740993}"#).unwrap().unwrap()),
            Some(Number::Int(9007199254740993))
        );
        assert_eq!(
            number(big.find(br#"{"n":9223372036854775808}"#).unwrap().unwrap()),
            Some(Number::Float(9.223372036854776e18))
        );
    }

    /// Every one-byte change of a few documents is valid for `find` exactly when serde_json accepts it, and
    /// the value found is the one serde_json's tree holds (names are unique in the seeds).
    #[test]
    fn find_agrees_with_serde_json_on_mutated_documents() {
        let seeds: [&[u8]; 4] = [
            br#"{"key":"k17","seq":3,"amount":4812,"pad":"xxxx"}"#,
            br#"{"o":{"amount":-1.5e2,"n":null,"t":true},"l":[1,{"amount":2},"\"a\u00e9"],"f":false}"#,
            br#"{"amount":{"amount":[]},"x":{}}"#,
            br#" [ {"amount":0} ] "#,
        ];
        let subs = b"{}[]\":,-+.0159eEtfnrul\\ x\t";
        let paths = [FieldPath::parse("amount").unwrap(), FieldPath::parse("o.amount").unwrap()];
        let mut checked = 0;
        for seed in seeds {
            let mut docs = vec![seed.to_vec()];
            for i in 0..seed.len() {
                docs.push([&seed[..i], &seed[i + 1..]].concat());
                docs.push(seed[..i].to_vec());
                for &c in subs {
                    let mut d = seed.to_vec();
                    d[i] = c;
                    docs.push(d.clone());
                    d.insert(i, c);
                    docs.push(d);
                }
            }
            for doc in &docs {
                let tree = serde_json::from_slice::<serde_json::Value>(doc);
                for p in &paths {
                    let got = p.find(doc);
                    let want = tree
                        .as_ref()
                        .ok()
                        .map(|v| p.parts.iter().try_fold(v, |v, name| v.as_object()?.get(name.as_str())));
                    match (&got, want) {
                        (Ok(found), Some(want)) => {
                            let found = found.map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
                            assert_eq!(found.as_ref(), want, "{}", String::from_utf8_lossy(doc));
                        }
                        (Err(_), None) => {}
                        _ => panic!("{}: find {got:?}, serde_json {tree:?}", String::from_utf8_lossy(doc)),
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
