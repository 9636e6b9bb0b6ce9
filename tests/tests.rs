//! Integration tests of the procpool facade: one binary, one module per area.

procpool::test_support!();

mod api;
mod failure;
mod lifecycle;
mod macros;
mod multiprocessing;
mod protocol;
mod python_api;
mod reliability;
mod robustness;
mod support;
