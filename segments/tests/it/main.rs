//! Integration tests of the segment log (one binary, see house style).

mod smoke;
