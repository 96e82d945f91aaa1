//! What the end-to-end tests share: the programs under test (the `catchup` binary, the examples), temporary
//! directories, generated logs, and running the binary.
//!
//! The programs are the ones cargo built in this test's target directory (`target/<profile>/catchup`,
//! `target/<profile>/examples/NAME`). The root package's tests cannot ask cargo for the binary of another
//! package (`CARGO_BIN_EXE_*` exists only inside the package that has it), so they must be built first:
//! `cargo build --workspace --bins --examples` (`scripts/test.sh` does). A missing program fails the test
//! saying so. `CATCHUP_BIN` (absolute, or relative to the workspace root) runs the tests against another
//! `catchup`, e.g. `target/release/catchup`.
#![allow(dead_code, reason = "each test binary uses its own part of this module")]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// A program cargo built beside this test: `target/<profile>/<rel>`.
pub fn built(rel: &str) -> PathBuf {
    // target/<profile>/deps/TEST-HASH -> target/<profile>/<rel>
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
    let path = profile_dir.join(rel);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins --examples` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The `catchup` binary under test: `CATCHUP_BIN` if set, else `target/<profile>/catchup`.
pub fn bin() -> PathBuf {
    match std::env::var_os("CATCHUP_BIN") {
        Some(p) => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
            assert!(path.is_file(), "CATCHUP_BIN: {} is not a file", path.display());
            path
        }
        None => built("catchup"),
    }
}

/// A command running the binary (without `RUST_BACKTRACE`, so that error output is what a user sees).
pub fn command() -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.env_remove("RUST_BACKTRACE");
    c
}

/// The same, with `assert_cmd`'s assertions.
pub fn catchup() -> assert_cmd::Command {
    assert_cmd::Command::from_std(command())
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = command().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs the binary and fails the test, with its stderr, unless it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let out = command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "catchup {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A temporary directory named `PREFIX...`, removed when dropped.
pub fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Generates the log `dir/name` with `catchup gen` (`extra`: more flags; segments of 1 MiB unless it gives
/// `--segment-bytes`, since opening a log scans its active segment, which is slow for big ones in debug
/// builds); returns its directory.
pub fn gen_log(dir: &Path, name: &str, events: u64, keys: u64, extra: &[&str]) -> PathBuf {
    let log = dir.join(name);
    let mut args = vec!["gen", "-q", "--out", s(&log)];
    let (events, keys) = (events.to_string(), keys.to_string());
    args.extend(["--events", &events, "--keys", &keys]);
    if !extra.contains(&"--segment-bytes") {
        args.extend(["--segment-bytes", "1MiB"]);
    }
    args.extend(extra);
    run_ok(&args);
    log
}

/// Each line of `text` as JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

/// The events of a log, as `catchup export` prints them.
pub fn export(log: &Path) -> Vec<Value> {
    json_lines(&String::from_utf8(run_ok(&["export", s(log)]).stdout).unwrap())
}

/// A file's text; fails the test, naming the file, if it cannot be read.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}
