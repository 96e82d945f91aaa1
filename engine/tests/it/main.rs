//! Integration tests of the engine (one binary).

mod smoke;
