//! The wire: everything both processes must agree on — the frames they exchange,
//! the task registry that names functions on both sides, and the environment marker
//! that makes a re-executed program a worker.
//!
//! Both the engine (the pool's side) and the worker side import from here; nothing
//! here imports either of them.

pub(crate) mod marker;
pub(crate) mod protocol;
pub(crate) mod registry;
