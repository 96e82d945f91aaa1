//! Checks a JSON document against its table in `docs/json-output.md`: every documented field is present,
//! with the documented type. Shared by `tests/cli_edges.rs`, `tests/kafka.rs` and the unit test of the replay
//! progress document (`#[path]` includes: no `util/mod.rs` entry).
#![allow(dead_code, reason = "each includer uses its own part")]

use serde_json::Value;

/// The page, read from the source tree.
pub const DOC: &str = include_str!("../../docs/json-output.md");

/// The (path, type) rows of the tables under the heading that starts with `heading` (up to the next heading).
pub fn fields(heading: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in DOC.lines() {
        if line.starts_with('#') {
            in_section = line.trim_start_matches('#').trim().starts_with(heading);
            continue;
        }
        if in_section && line.starts_with("| `") {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            out.push((cells[1].trim_matches('`').to_string(), cells[2].to_string()));
        }
    }
    assert!(!out.is_empty(), "docs/json-output.md documents no fields under a heading starting with {heading:?}");
    out
}

fn type_ok(v: &Value, ty: &str) -> bool {
    ty.split(" or ").any(|t| match t.trim() {
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        other => panic!("docs/json-output.md: unknown type {other:?}"),
    })
}

/// Checks `path` (`a.b`, `a[].b`, `a.*.b`; member names may hold dots, e.g. `p99.9`) in `v`. A null on the
/// way stops the check there (the parent's own row says whether it may be null).
pub fn check(v: &Value, path: &str, ty: &str) -> Result<(), String> {
    if path.is_empty() {
        return if type_ok(v, ty) { Ok(()) } else { Err(format!("is {v}, documented as {ty}")) };
    }
    if v.is_null() {
        return Ok(());
    }
    let Some(obj) = v.as_object() else { return Err(format!("{v} is not an object")) };
    if let Some(rest) = path.strip_prefix("*.") {
        let members: Vec<(&String, &Value)> = obj.iter().filter(|(_, m)| m.is_object()).collect();
        if members.is_empty() {
            return Err("no object member to check `*` on".into());
        }
        for (k, m) in members {
            check(m, rest, ty).map_err(|e| format!("{k}.{rest}: {e}"))?;
        }
        return Ok(());
    }
    // The longest member name the path starts with.
    let key = obj
        .keys()
        .filter(|k| {
            path == k.as_str()
                || path.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('.') || r.starts_with("[]"))
        })
        .max_by_key(|k| k.len())
        .ok_or_else(|| format!("no member for {path:?} (members: {:?})", obj.keys().collect::<Vec<_>>()))?;
    let member = &obj[key];
    let rest = &path[key.len()..];
    if let Some(rest) = rest.strip_prefix("[]") {
        let items = member.as_array().ok_or_else(|| format!("{key} is not an array"))?;
        if items.is_empty() {
            return Err(format!("{key} is empty: nothing to check {rest} on"));
        }
        for (i, item) in items.iter().enumerate() {
            check(item, rest.strip_prefix('.').unwrap_or(rest), ty).map_err(|e| format!("{key}[{i}]{rest}: {e}"))?;
        }
        return Ok(());
    }
    check(member, rest.strip_prefix('.').unwrap_or(rest), ty).map_err(|e| format!("{key}: {e}"))
}

/// Checks every field documented under `heading` in `v`; `skip` leaves out the paths it is true for.
pub fn check_documented(v: &Value, heading: &str, skip: impl Fn(&str) -> bool) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, ty) in fields(heading) {
        if skip(&path) {
            continue;
        }
        checked += 1;
        if let Err(e) = check(v, &path, &ty) {
            problems.push(format!("{path}: {e}"));
        }
    }
    assert!(checked > 0, "{heading}: nothing checked");
    assert!(problems.is_empty(), "{heading}: not as documented:\n{}\nin {v:#}", problems.join("\n"));
}
