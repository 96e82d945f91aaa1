//! Library half of the `catchup` command line: code shared by the binary and the top-level benchmarks.
//! Everything user-facing lives in the binary (`main.rs` and `cmd/`).

pub mod bench;
pub mod synth;
