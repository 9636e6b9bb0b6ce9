//! A downstream crate's integration tests: one line of setup, then pools work in
//! `#[test]`s and `proptest!` blocks, under `cargo test` and `cargo nextest run`.

procpool::test_support!();

mod conformance;
mod cross_crate;
mod processes;
mod properties;
