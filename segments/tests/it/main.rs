//! Integration tests of the segment log (one binary, see house style).

mod bad_input;
mod corruption;
mod crash;
mod faults;
mod follow;
mod fuzz_key_index;
mod fuzz_parsers;
mod hygiene;
mod key_index;
mod merge;
mod model;
mod readers;
mod recovery;
mod smoke;
mod torn_tail;
mod util;
