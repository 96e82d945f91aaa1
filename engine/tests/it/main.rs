//! Integration tests of the engine (one binary). The oracle is a plain sequential replay of the log
//! (`util::oracle`); every test compares the parallel engine against it.

mod binding;
mod config;
mod corrupt;
mod exposition;
mod failures;
mod follow;
mod fuzz_snapshot;
#[cfg(feature = "kafka")]
mod kafka;
mod keyed_api;
mod merge;
mod order;
mod policy;
mod reshard;
mod resume;
mod smoke;
mod util;
